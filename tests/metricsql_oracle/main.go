// Command metricsql-oracle reads queries the way VictoriaMetrics reads them, with the
// real MetricsQL parser (Debian's golang-github-victoriametrics-metricsql-dev, the
// library VictoriaMetrics 1.79 is built with), and says what the backend would see.
//
// Input: one JSON object per line, {"q": "<query>"}. Output: one JSON object per line,
// in the same order, answering for each query:
//
//   - whether metricsql.Parse accepts it, and every selector (*metricsql.MetricExpr) of
//     the parsed tree with its label filters, one group per `or` branch (this version
//     of the library has no `or` filters, so a selector has one group);
//   - the printed form (AppendString), whether that parses a second time and prints the
//     same again, and the selectors of that second parse;
//   - whether metricsql.Optimize, which VictoriaMetrics runs on every query before
//     executing it, panics (it re-parses the printed form and panics when that fails:
//     the "BUG: cannot parse the expression" crash), and the selectors of its result,
//     which is the query that actually runs;
//   - whether a window, step or offset panics when VictoriaMetrics evaluates it
//     (DurationExpr.Duration: "BUG: cannot parse duration", for `x[.5m]` or `x[0x10]`,
//     which parse as numbers but are not durations).
//
// The walk covers what metricsql.VisitAll skips: the expression after `@` is also
// evaluated by VictoriaMetrics, so its selectors count.
//
// Build (offline, GOPATH mode): GO111MODULE=off GOPATH=/usr/share/gocode go build.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"github.com/VictoriaMetrics/metricsql"
)

type request struct {
	Q string `json:"q"`
}

type filter struct {
	Label string `json:"label"`
	Op    string `json:"op"`
	Value string `json:"value"`
}

type selector struct {
	Printed string     `json:"printed"`
	Groups  [][]filter `json:"groups"`
}

type answer struct {
	Parses           bool       `json:"parses"`
	Error            string     `json:"error,omitempty"`
	Selectors        []selector `json:"selectors"`
	Printed          string     `json:"printed,omitempty"`
	Reparses         bool       `json:"reparses"`
	ReparseError     string     `json:"reparse_error,omitempty"`
	Reprinted        string     `json:"reprinted,omitempty"`
	ReparseSelectors []selector `json:"reparse_selectors"`
	OptimizePanic    string     `json:"optimize_panic,omitempty"`
	DurationPanic    string     `json:"duration_panic,omitempty"`
	RunSelectors     []selector `json:"run_selectors"`
}

func op(lf *metricsql.LabelFilter) string {
	switch {
	case lf.IsNegative && lf.IsRegexp:
		return "!~"
	case lf.IsNegative:
		return "!="
	case lf.IsRegexp:
		return "=~"
	}
	return "="
}

// walk calls f on every node of e, the `@` expressions of rollups included.
func walk(e metricsql.Expr, f func(metricsql.Expr)) {
	switch t := e.(type) {
	case *metricsql.BinaryOpExpr:
		walk(t.Left, f)
		walk(t.Right, f)
	case *metricsql.FuncExpr:
		for _, a := range t.Args {
			walk(a, f)
		}
	case *metricsql.AggrFuncExpr:
		for _, a := range t.Args {
			walk(a, f)
		}
	case *metricsql.RollupExpr:
		walk(t.Expr, f)
		if t.At != nil {
			walk(t.At, f)
		}
	}
	if e != nil {
		f(e)
	}
}

func selectors(e metricsql.Expr) []selector {
	out := []selector{}
	walk(e, func(n metricsql.Expr) {
		me, ok := n.(*metricsql.MetricExpr)
		if !ok {
			return
		}
		group := []filter{}
		for i := range me.LabelFilters {
			lf := &me.LabelFilters[i]
			group = append(group, filter{Label: lf.Label, Op: op(lf), Value: lf.Value})
		}
		out = append(out, selector{Printed: string(me.AppendString(nil)), Groups: [][]filter{group}})
	})
	return out
}

// guarded runs f and turns a panic into its message.
func guarded(f func()) (panicked string) {
	defer func() {
		if r := recover(); r != nil {
			panicked = fmt.Sprint(r)
		}
	}()
	f()
	return ""
}

// durationPanic evaluates every window, step and offset as VictoriaMetrics does (with a
// one-minute step) and returns the first panic.
func durationPanic(e metricsql.Expr) string {
	found := ""
	walk(e, func(n metricsql.Expr) {
		re, ok := n.(*metricsql.RollupExpr)
		if !ok || found != "" {
			return
		}
		for _, d := range []*metricsql.DurationExpr{re.Window, re.Step, re.Offset} {
			if p := guarded(func() { d.Duration(60_000) }); p != "" && found == "" {
				found = p
			}
		}
	})
	return found
}

func judge(q string) (a answer) {
	a.Selectors = []selector{}
	a.ReparseSelectors = []selector{}
	a.RunSelectors = []selector{}
	var e metricsql.Expr
	var err error
	if p := guarded(func() { e, err = metricsql.Parse(q) }); p != "" {
		a.Error = "panic: " + p
		return a
	}
	if err != nil {
		a.Error = err.Error()
		return a
	}
	a.Parses = true
	a.Selectors = selectors(e)
	a.DurationPanic = durationPanic(e)
	a.Printed = string(e.AppendString(nil))
	var e2 metricsql.Expr
	if p := guarded(func() { e2, err = metricsql.Parse(a.Printed) }); p != "" {
		a.ReparseError = "panic: " + p
	} else if err != nil {
		a.ReparseError = err.Error()
	} else {
		a.Reparses = true
		a.Reprinted = string(e2.AppendString(nil))
		a.ReparseSelectors = selectors(e2)
	}
	var run metricsql.Expr
	a.OptimizePanic = guarded(func() { run = metricsql.Optimize(e) })
	if a.OptimizePanic == "" {
		a.RunSelectors = selectors(run)
	}
	return a
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	for in.Scan() {
		var r request
		if err := json.Unmarshal(in.Bytes(), &r); err != nil {
			fmt.Fprintf(os.Stderr, "metricsql-oracle: bad input line: %s\n", err)
			os.Exit(2)
		}
		if err := enc.Encode(judge(r.Q)); err != nil {
			fmt.Fprintf(os.Stderr, "metricsql-oracle: %s\n", err)
			os.Exit(2)
		}
		// One answer per line, flushed at once: a caller may wait for each answer
		// before sending the next query (the fuzz target does).
		if err := out.Flush(); err != nil {
			os.Exit(2)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "metricsql-oracle: %s\n", err)
		os.Exit(2)
	}
}
