// Command go-form-oracle says what Go's net/http hands a handler for a raw request:
// r.Form, r.PostForm, FormValue("query"), r.Form["match[]"] and the errors, as
// Prometheus and VictoriaMetrics (both Go programs) read them. It is the oracle of the
// filter's form tests (tests/go_form_rules.rs) and of the form_codec and
// request_decision fuzz targets; docs/security.md, "Class 1", says what it checks.
//
// Standard library only, built offline with the Go that builds the backends:
//
//	GO111MODULE=off go build -o target/go-form-oracle/go-form-oracle ./tests/go_form_oracle
//
// Usage:
//
//	go-form-oracle < request.http     one raw HTTP/1.1 request in, its handler view out
//	go-form-oracle -serve             framed requests on stdin, answers on stdout
//
// A frame is one kind byte ('R' a raw request, 'Q' a query string or form body for
// url.ParseQuery, 'M' a Content-Type value for mime.ParseMediaType), a big-endian
// uint32 length and that many bytes. Each answer is a big-endian uint32 length and that
// many bytes of JSON. Strings are JSON strings when they are UTF-8, otherwise
// {"hex": "..."}, so that every byte Go sees comes back as it is.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"sort"
	"unicode/utf8"
)

// bstr is a Go string that keeps its bytes through JSON.
type bstr string

func (s bstr) MarshalJSON() ([]byte, error) {
	if utf8.ValidString(string(s)) {
		return json.Marshal(string(s))
	}
	return json.Marshal(map[string]string{"hex": hex.EncodeToString([]byte(s))})
}

// pair is one key of url.Values with its values in order.
type pair struct {
	Key    bstr   `json:"key"`
	Values []bstr `json:"values"`
}

func sortedValues(values url.Values) []pair {
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]pair, 0, len(keys))
	for _, k := range keys {
		p := pair{Key: bstr(k), Values: []bstr{}}
		for _, v := range values[k] {
			p.Values = append(p.Values, bstr(v))
		}
		out = append(out, p)
	}
	return out
}

func errText(err error) *string {
	if err == nil {
		return nil
	}
	s := err.Error()
	return &s
}

// handlerView is what a handler of the request sees.
type handlerView struct {
	// The server answered 400 itself (ReadRequest or its header checks failed): no
	// handler ran, nothing else is set.
	ServerError *string `json:"server_error"`
	// r.ParseForm() called first, as Prometheus' /api/v1/series and /federate do
	// (they answer 400 when it fails).
	ParseFormError *string `json:"parse_form_error"`
	// r.FormValue("query") called first, as every other handler of both backends does:
	// it runs ParseMultipartForm, which runs ParseForm; both errors are ignored.
	Query          bstr    `json:"query"`
	MultipartError *string `json:"multipart_error"`
	// r.Form and r.PostForm after FormValue: what VictoriaMetrics' r.Form["match[]"]
	// and Prometheus' r.Form["match[]"] read.
	Form     []pair `json:"form"`
	PostForm []pair `json:"post_form"`
	Match    []bstr `json:"match[]"`
	MatchVM  []bstr `json:"match"`
	// r.URL.Query(): where current VictoriaMetrics reads extra_label first.
	URLQuery []pair `json:"url_query"`
}

// validHeaderValue is httpguts.ValidHeaderFieldValue, which the server applies to
// every header after ReadRequest: no control byte but space and tab.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		b := v[i]
		if (b < ' ' || b == 0x7f) && b != ' ' && b != '\t' {
			return false
		}
	}
	return true
}

// readRequest reads a request as net/http's server does before calling a handler.
func readRequest(raw []byte) (*http.Request, error) {
	r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		return nil, err
	}
	// ReadRequest moves the Host header into r.Host.
	if r.ProtoAtLeast(1, 1) && r.Host == "" {
		return nil, errors.New("missing required Host header")
	}
	for _, values := range r.Header {
		for _, v := range values {
			if !validHeaderValue(v) {
				return nil, errors.New("invalid header value")
			}
		}
	}
	return r, nil
}

func viewRequest(raw []byte) handlerView {
	first, err := readRequest(raw)
	if err != nil {
		return handlerView{ServerError: errText(err)}
	}
	view := handlerView{ParseFormError: errText(first.ParseForm())}

	r, _ := readRequest(raw)
	view.Query = bstr(r.FormValue("query"))
	view.MultipartError = errText(r.ParseMultipartForm(32 << 20))
	view.Form = sortedValues(r.Form)
	view.PostForm = sortedValues(r.PostForm)
	for _, v := range r.Form["match[]"] {
		view.Match = append(view.Match, bstr(v))
	}
	for _, v := range r.Form["match"] {
		view.MatchVM = append(view.MatchVM, bstr(v))
	}
	view.URLQuery = sortedValues(r.URL.Query())
	return view
}

type queryView struct {
	Values []pair  `json:"values"`
	Error  *string `json:"error"`
}

func viewQuery(raw []byte) queryView {
	values, err := url.ParseQuery(string(raw))
	return queryView{Values: sortedValues(values), Error: errText(err)}
}

type mediaTypeView struct {
	Type   bstr    `json:"type"`
	Params []pair  `json:"params"`
	Error  *string `json:"error"`
}

func viewMediaType(raw []byte) mediaTypeView {
	mediaType, params, err := mime.ParseMediaType(string(raw))
	view := mediaTypeView{Type: bstr(mediaType), Error: errText(err), Params: []pair{}}
	values := url.Values{}
	for k, v := range params {
		values[k] = []string{v}
	}
	view.Params = sortedValues(values)
	return view
}

func serve(in io.Reader, out io.Writer) error {
	reader := bufio.NewReader(in)
	writer := bufio.NewWriter(out)
	var header [5]byte
	for {
		if _, err := io.ReadFull(reader, header[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		payload := make([]byte, binary.BigEndian.Uint32(header[1:]))
		if _, err := io.ReadFull(reader, payload); err != nil {
			return err
		}
		var answer interface{}
		switch header[0] {
		case 'R':
			answer = viewRequest(payload)
		case 'Q':
			answer = viewQuery(payload)
		case 'M':
			answer = viewMediaType(payload)
		default:
			return fmt.Errorf("unknown frame kind %q", header[0])
		}
		text, err := json.Marshal(answer)
		if err != nil {
			return err
		}
		var length [4]byte
		binary.BigEndian.PutUint32(length[:], uint32(len(text)))
		writer.Write(length[:])
		writer.Write(text)
		if err := writer.Flush(); err != nil {
			return err
		}
	}
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "-serve" {
		if err := serve(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "go-form-oracle:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: go-form-oracle [-serve] < request")
		os.Exit(2)
	}
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-form-oracle:", err)
		os.Exit(1)
	}
	text, _ := json.MarshalIndent(viewRequest(raw), "", "  ")
	fmt.Println(string(text))
}
