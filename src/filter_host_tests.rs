//! Tests of the host interface, [`crate::filter`], against an in-process fake of the
//! proxy-wasm host: that the filter reads what Envoy hands it, and that what the core
//! decides reaches Envoy as the right host calls from the right context. What the core
//! decides is tested in its own modules (the flight protocol in `flight_tests.rs`, the
//! request's life in `lifecycle_tests.rs`).
//!
//! The SDK talks to Envoy through `extern "C"` imports; on the host target this module
//! defines them, records what the filter asks for (local replies, callouts, header and
//! body edits, shared data, queues, counters), and drives the SDK's exported
//! `proxy_on_*` entry points the way Envoy would. Both the SDK's dispatcher and this
//! fake are thread-local, so every test is an isolated VM.

use crate::lifecycle::tests::{owned, params};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType, MetricType, Status, StreamType};
use std::cell::RefCell;
use std::collections::HashMap;

#[derive(Default, Debug, Clone)]
struct Stream {
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// The backend's answer, as Envoy holds it while the filter sees it.
    response_headers: Vec<(String, Vec<u8>)>,
    response_body: Vec<u8>,
    /// What of the answer Envoy passed on to the client.
    body_passed: Vec<u8>,
    /// The filter resumed the answer it held.
    response_resumed: bool,
    resumed: bool,
    reply: Option<Reply>,
}

#[derive(Debug, Clone, PartialEq)]
struct Reply {
    status: u32,
    headers: Vec<(String, String)>,
    body: String,
}

#[derive(Debug, Clone)]
struct Callout {
    token: u32,
    context: u32,
    cluster: String,
    headers: Vec<(String, String)>,
    timeout_ms: u32,
}

type Pairs = Vec<(String, Vec<u8>)>;

#[derive(Default)]
struct Host {
    effective: u32,
    configuration: Vec<u8>,
    streams: HashMap<u32, Stream>,
    shared: HashMap<String, (Vec<u8>, u32)>,
    callouts: Vec<Callout>,
    next_token: u32,
    response: Option<(Pairs, Vec<u8>)>,
    metrics: HashMap<u32, (String, u64)>,
    logs: Vec<String>,
    now_s: u64,
    dead: Vec<u32>,
    tick_period_ms: u32,
    /// Shared queues: name, the root that registered it, and its items.
    queues: Vec<(String, u32, Vec<Vec<u8>>)>,
}

thread_local! {
    static HOST: RefCell<Host> = RefCell::new(Host { now_s: 1_800_000_000, ..Host::default() });
}

fn with_host<R>(f: impl FnOnce(&mut Host) -> R) -> R {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

unsafe fn bytes<'a>(data: *const u8, size: usize) -> &'a [u8] {
    if data.is_null() || size == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(data, size)
    }
}

unsafe fn text(data: *const u8, size: usize) -> String {
    String::from_utf8_lossy(bytes(data, size)).into_owned()
}

/// Hands bytes to the module the way the host does: memory the module owns.
unsafe fn give(data: &[u8], out_data: *mut *mut u8, out_size: *mut usize) {
    let boxed: Box<[u8]> = data.to_vec().into_boxed_slice();
    *out_size = boxed.len();
    *out_data = Box::into_raw(boxed) as *mut u8;
}

fn decode_pairs(raw: &[u8]) -> Vec<(String, Vec<u8>)> {
    if raw.len() < 4 {
        return Vec::new();
    }
    let count = u32::from_le_bytes(raw[0..4].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    let mut p = 4 + count * 8;
    for n in 0..count {
        let s = 4 + n * 8;
        let name_len = u32::from_le_bytes(raw[s..s + 4].try_into().unwrap()) as usize;
        let value_len = u32::from_le_bytes(raw[s + 4..s + 8].try_into().unwrap()) as usize;
        let name = String::from_utf8(raw[p..p + name_len].to_vec()).unwrap();
        p += name_len + 1;
        let value = raw[p..p + value_len].to_vec();
        p += value_len + 1;
        out.push((name, value));
    }
    out
}

fn encode_pairs(pairs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let borrowed: Vec<(&str, &[u8])> = pairs.iter().map(|(n, v)| (n.as_str(), &v[..])).collect();
    crate::header_map::serialize(&borrowed)
}

fn lossy_pairs(pairs: Vec<(String, Vec<u8>)>) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

fn map_of(host: &mut Host, map: MapType) -> Option<&mut Vec<(String, Vec<u8>)>> {
    match map {
        MapType::HttpRequestHeaders => {
            let id = host.effective;
            host.streams.get_mut(&id).map(|s| &mut s.headers)
        }
        MapType::HttpCallResponseHeaders => host.response.as_mut().map(|r| &mut r.0),
        MapType::HttpResponseHeaders => {
            let id = host.effective;
            host.streams.get_mut(&id).map(|s| &mut s.response_headers)
        }
        _ => None,
    }
}

// ---- The host side of the ABI -------------------------------------------------------

#[no_mangle]
unsafe extern "C" fn proxy_log(_level: LogLevel, data: *const u8, size: usize) -> Status {
    let message = text(data, size);
    // The SDK's panic hook logs through the host: show a failed assertion's message.
    if message.starts_with("panicked at") {
        eprintln!("{message}");
    }
    with_host(|h| h.logs.push(message));
    Status::Ok
}

#[no_mangle]
unsafe extern "C" fn proxy_get_log_level(level: *mut LogLevel) -> Status {
    *level = LogLevel::Trace;
    Status::Ok
}

#[no_mangle]
unsafe extern "C" fn proxy_get_current_time_nanoseconds(out: *mut u64) -> Status {
    *out = with_host(|h| h.now_s) * 1_000_000_000;
    Status::Ok
}

#[no_mangle]
extern "C" fn proxy_set_tick_period_milliseconds(period: u32) -> Status {
    with_host(|h| h.tick_period_ms = period);
    Status::Ok
}

#[no_mangle]
unsafe extern "C" fn proxy_get_buffer_bytes(
    buffer: BufferType,
    start: usize,
    max_size: usize,
    out_data: *mut *mut u8,
    out_size: *mut usize,
) -> Status {
    let data = with_host(|h| match buffer {
        BufferType::PluginConfiguration => Some(h.configuration.clone()),
        BufferType::HttpRequestBody => h.streams.get(&h.effective).map(|s| s.body.clone()),
        BufferType::HttpResponseBody => {
            h.streams.get(&h.effective).map(|s| s.response_body.clone())
        }
        BufferType::HttpCallResponseBody => h.response.as_ref().map(|r| r.1.clone()),
        _ => None,
    });
    match data {
        Some(data) => {
            let start = start.min(data.len());
            let end = start.saturating_add(max_size).min(data.len());
            give(&data[start..end], out_data, out_size);
            Status::Ok
        }
        None => Status::NotFound,
    }
}

#[no_mangle]
unsafe extern "C" fn proxy_set_buffer_bytes(
    buffer: BufferType,
    start: usize,
    size: usize,
    data: *const u8,
    data_size: usize,
) -> Status {
    let new = bytes(data, data_size).to_vec();
    with_host(|h| {
        let id = h.effective;
        match (buffer, h.streams.get_mut(&id)) {
            (BufferType::HttpRequestBody, Some(stream)) => {
                // Envoy supports replacing from the start only.
                assert_eq!(start, 0);
                let size = size.min(stream.body.len());
                stream.body.splice(0..size, new);
                Status::Ok
            }
            (BufferType::HttpResponseBody, Some(stream)) => {
                assert_eq!(start, 0);
                let size = size.min(stream.response_body.len());
                stream.response_body.splice(0..size, new);
                Status::Ok
            }
            _ => Status::BadArgument,
        }
    })
}

#[no_mangle]
unsafe extern "C" fn proxy_get_header_map_pairs(
    map: MapType,
    out_data: *mut *mut u8,
    out_size: *mut usize,
) -> Status {
    let pairs = with_host(|h| map_of(h, map).cloned().unwrap_or_default());
    give(&encode_pairs(&pairs), out_data, out_size);
    Status::Ok
}

#[no_mangle]
extern "C" fn proxy_set_header_map_pairs(_map: MapType, _data: *const u8, _size: usize) -> Status {
    Status::Ok
}

#[no_mangle]
unsafe extern "C" fn proxy_get_header_map_value(
    map: MapType,
    key: *const u8,
    key_size: usize,
    out_data: *mut *mut u8,
    out_size: *mut usize,
) -> Status {
    let key = text(key, key_size);
    let value = with_host(|h| {
        map_of(h, map).and_then(|m| m.iter().find(|(n, _)| *n == key).map(|(_, v)| v.clone()))
    });
    match value {
        Some(v) => {
            give(&v, out_data, out_size);
            Status::Ok
        }
        None => Status::NotFound,
    }
}

#[no_mangle]
unsafe extern "C" fn proxy_remove_header_map_value(
    map: MapType,
    key: *const u8,
    key_size: usize,
) -> Status {
    let key = text(key, key_size);
    with_host(|h| match map_of(h, map) {
        Some(m) => {
            m.retain(|(n, _)| *n != key);
            Status::Ok
        }
        None => Status::BadArgument,
    })
}

#[no_mangle]
unsafe extern "C" fn proxy_replace_header_map_value(
    map: MapType,
    key: *const u8,
    key_size: usize,
    value: *const u8,
    value_size: usize,
) -> Status {
    let key = text(key, key_size);
    let value = bytes(value, value_size).to_vec();
    with_host(|h| match map_of(h, map) {
        Some(m) => {
            m.retain(|(n, _)| *n != key);
            m.push((key, value));
            Status::Ok
        }
        None => Status::BadArgument,
    })
}

#[no_mangle]
unsafe extern "C" fn proxy_add_header_map_value(
    map: MapType,
    key: *const u8,
    key_size: usize,
    value: *const u8,
    value_size: usize,
) -> Status {
    proxy_replace_header_map_value(map, key, key_size, value, value_size)
}

#[no_mangle]
extern "C" fn proxy_get_property(
    _p: *const u8,
    _s: usize,
    _d: *mut *mut u8,
    _z: *mut usize,
) -> Status {
    Status::NotFound
}

#[no_mangle]
extern "C" fn proxy_set_property(_p: *const u8, _s: usize, _d: *const u8, _z: usize) -> Status {
    Status::Ok
}

#[no_mangle]
unsafe extern "C" fn proxy_get_shared_data(
    key: *const u8,
    key_size: usize,
    out_data: *mut *mut u8,
    out_size: *mut usize,
    out_cas: *mut u32,
) -> Status {
    let key = text(key, key_size);
    match with_host(|h| h.shared.get(&key).cloned()) {
        Some((value, cas)) => {
            give(&value, out_data, out_size);
            *out_cas = cas;
            Status::Ok
        }
        None => Status::NotFound,
    }
}

#[no_mangle]
unsafe extern "C" fn proxy_set_shared_data(
    key: *const u8,
    key_size: usize,
    value: *const u8,
    value_size: usize,
    cas: u32,
) -> Status {
    let key = text(key, key_size);
    let value = bytes(value, value_size).to_vec();
    with_host(|h| {
        let current = h.shared.get(&key).map_or(0, |e| e.1);
        if cas != 0 && cas != current {
            return Status::CasMismatch;
        }
        h.shared.insert(key, (value, current + 1));
        Status::Ok
    })
}

#[no_mangle]
unsafe extern "C" fn proxy_register_shared_queue(
    name: *const u8,
    size: usize,
    out_id: *mut u32,
) -> Status {
    let name = text(name, size);
    with_host(|h| {
        let root = h.effective;
        h.queues.push((name, root, Vec::new()));
        *out_id = h.queues.len() as u32;
    });
    Status::Ok
}

#[no_mangle]
extern "C" fn proxy_resolve_shared_queue(
    _v: *const u8,
    _vs: usize,
    _n: *const u8,
    _ns: usize,
    _id: *mut u32,
) -> Status {
    Status::NotFound
}

#[no_mangle]
unsafe extern "C" fn proxy_dequeue_shared_queue(
    queue: u32,
    out_data: *mut *mut u8,
    out_size: *mut usize,
) -> Status {
    let item = with_host(|h| {
        let items = &mut h.queues.get_mut(queue as usize - 1)?.2;
        Some((!items.is_empty()).then(|| items.remove(0)))
    });
    match item {
        Some(Some(item)) => {
            give(&item, out_data, out_size);
            Status::Ok
        }
        Some(None) => Status::Empty,
        None => Status::NotFound,
    }
}

#[no_mangle]
unsafe extern "C" fn proxy_enqueue_shared_queue(
    queue: u32,
    data: *const u8,
    size: usize,
) -> Status {
    let item = bytes(data, size).to_vec();
    with_host(|h| match h.queues.get_mut(queue as usize - 1) {
        Some(q) => {
            q.2.push(item);
            Status::Ok
        }
        None => Status::NotFound,
    })
}

#[no_mangle]
extern "C" fn proxy_continue_stream(stream: StreamType) -> Status {
    with_host(|h| {
        let id = h.effective;
        match (stream, h.streams.get_mut(&id)) {
            (StreamType::HttpRequest, Some(s)) => {
                s.resumed = true;
                Status::Ok
            }
            (StreamType::HttpResponse, Some(s)) => {
                s.response_resumed = true;
                Status::Ok
            }
            _ => Status::BadArgument,
        }
    })
}

#[no_mangle]
extern "C" fn proxy_close_stream(_stream: StreamType) -> Status {
    Status::Ok
}

#[no_mangle]
unsafe extern "C" fn proxy_send_local_response(
    status: u32,
    _details: *const u8,
    _details_size: usize,
    body: *const u8,
    body_size: usize,
    headers: *const u8,
    headers_size: usize,
    _grpc_status: i32,
) -> Status {
    let reply = Reply {
        status,
        headers: lossy_pairs(decode_pairs(bytes(headers, headers_size))),
        body: text(body, body_size),
    };
    with_host(|h| {
        let id = h.effective;
        if let Some(s) = h.streams.get_mut(&id) {
            assert!(s.reply.is_none(), "two replies on context {id}");
            s.reply = Some(reply);
        }
    });
    Status::Ok
}

#[no_mangle]
unsafe extern "C" fn proxy_http_call(
    upstream: *const u8,
    upstream_size: usize,
    headers: *const u8,
    headers_size: usize,
    _body: *const u8,
    _body_size: usize,
    _trailers: *const u8,
    _trailers_size: usize,
    timeout_ms: u32,
    out_token: *mut u32,
) -> Status {
    let cluster = text(upstream, upstream_size);
    let headers = lossy_pairs(decode_pairs(bytes(headers, headers_size)));
    with_host(|h| {
        if cluster == "missing" {
            return Status::BadArgument;
        }
        h.next_token += 1;
        let token = h.next_token;
        h.callouts.push(Callout {
            token,
            context: h.effective,
            cluster,
            headers,
            timeout_ms,
        });
        *out_token = token;
        Status::Ok
    })
}

#[no_mangle]
extern "C" fn proxy_grpc_call(
    _a: *const u8,
    _b: usize,
    _c: *const u8,
    _d: usize,
    _e: *const u8,
    _f: usize,
    _g: *const u8,
    _h: usize,
    _i: *const u8,
    _j: usize,
    _k: u32,
    _l: *mut u32,
) -> Status {
    Status::BadArgument
}

#[no_mangle]
extern "C" fn proxy_grpc_stream(
    _a: *const u8,
    _b: usize,
    _c: *const u8,
    _d: usize,
    _e: *const u8,
    _f: usize,
    _g: *const u8,
    _h: usize,
    _i: *mut u32,
) -> Status {
    Status::BadArgument
}

#[no_mangle]
extern "C" fn proxy_grpc_send(_t: u32, _m: *const u8, _l: usize, _e: bool) -> Status {
    Status::BadArgument
}

#[no_mangle]
extern "C" fn proxy_grpc_cancel(_t: u32) -> Status {
    Status::BadArgument
}

#[no_mangle]
extern "C" fn proxy_grpc_close(_t: u32) -> Status {
    Status::BadArgument
}

#[no_mangle]
unsafe extern "C" fn proxy_get_status(
    code: *mut u32,
    _d: *mut *mut u8,
    size: *mut usize,
) -> Status {
    *code = 0;
    *size = 0;
    Status::Ok
}

#[no_mangle]
extern "C" fn proxy_set_effective_context(context_id: u32) -> Status {
    with_host(|h| {
        if h.dead.contains(&context_id) {
            return Status::BadArgument;
        }
        h.effective = context_id;
        Status::Ok
    })
}

#[no_mangle]
extern "C" fn proxy_call_foreign_function(
    _n: *const u8,
    _ns: usize,
    _a: *const u8,
    _as: usize,
    _r: *mut *mut u8,
    _rs: *mut usize,
) -> Status {
    Status::NotFound
}

#[no_mangle]
extern "C" fn proxy_done() -> Status {
    Status::Ok
}

#[no_mangle]
unsafe extern "C" fn proxy_define_metric(
    _kind: MetricType,
    name: *const u8,
    name_size: usize,
    out_id: *mut u32,
) -> Status {
    let name = text(name, name_size);
    with_host(|h| {
        let id = match h.metrics.iter().find(|(_, (n, _))| *n == name) {
            Some((id, _)) => *id,
            None => {
                let id = h.metrics.len() as u32 + 1;
                h.metrics.insert(id, (name, 0));
                id
            }
        };
        *out_id = id;
    });
    Status::Ok
}

#[no_mangle]
unsafe extern "C" fn proxy_get_metric(id: u32, out: *mut u64) -> Status {
    *out = with_host(|h| h.metrics.get(&id).map_or(0, |m| m.1));
    Status::Ok
}

#[no_mangle]
extern "C" fn proxy_record_metric(_id: u32, _value: u64) -> Status {
    Status::Ok
}

#[no_mangle]
extern "C" fn proxy_increment_metric(id: u32, offset: i64) -> Status {
    with_host(|h| match h.metrics.get_mut(&id) {
        Some(m) => {
            // Gauges go down too: two's complement wrapping adds a negative offset.
            m.1 = m.1.wrapping_add(offset as u64);
            Status::Ok
        }
        None => Status::NotFound,
    })
}

// ---- The SDK's entry points, driven like Envoy drives them ----------------------------

extern "C" {
    fn proxy_on_context_create(context_id: u32, root_context_id: u32);
    fn proxy_on_configure(context_id: u32, size: usize) -> bool;
    fn proxy_on_request_headers(context_id: u32, num_headers: usize, end_of_stream: bool)
        -> Action;
    fn proxy_on_request_body(context_id: u32, body_size: usize, end_of_stream: bool) -> Action;
    fn proxy_on_request_trailers(context_id: u32, num_trailers: usize) -> Action;
    fn proxy_on_response_headers(
        context_id: u32,
        num_headers: usize,
        end_of_stream: bool,
    ) -> Action;
    fn proxy_on_response_body(context_id: u32, body_size: usize, end_of_stream: bool) -> Action;
    fn proxy_on_http_call_response(
        context_id: u32,
        token: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    );
    fn proxy_on_tick(context_id: u32);
    fn proxy_on_queue_ready(context_id: u32, queue_id: u32);
    fn proxy_on_done(context_id: u32) -> bool;
    fn proxy_on_delete(context_id: u32);
}

const USERINFO_CONFIG: &str = r#"{
  "tenant_label": "client_id",
  "identity": {"source": "userinfo", "cluster": "oidc", "authority": "idp.example",
               "claim": "https://example.com/client_id"}
}"#;
const ALICE_CLAIMS: &str = r#"{"https://example.com/client_id":"1999"}"#;
const FORM: &str = "application/x-www-form-urlencoded";
const METADATA: &str = "/api/v1/metadata";

struct Vm;

impl Vm {
    fn new() -> Vm {
        super::_initialize();
        Vm
    }

    fn configure(&self, root: u32, config: &str) -> bool {
        with_host(|h| {
            h.configuration = config.as_bytes().to_vec();
            h.effective = root;
        });
        unsafe {
            proxy_on_context_create(root, 0);
            proxy_on_configure(root, config.len())
        }
    }

    /// Request headers on the worker whose root is `root`; `body_follows` when they do
    /// not end the stream.
    fn headers(
        &self,
        root: u32,
        id: u32,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body_follows: bool,
    ) -> Action {
        let mut headers: Vec<(String, Vec<u8>)> = vec![
            (":method".into(), method.into()),
            (":path".into(), path.into()),
            (":authority".into(), b"vm".to_vec()),
        ];
        headers.extend(
            extra
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())),
        );
        with_host(|h| {
            h.streams.insert(
                id,
                Stream {
                    headers,
                    ..Stream::default()
                },
            );
            h.effective = id;
        });
        unsafe {
            proxy_on_context_create(id, root);
            proxy_on_request_headers(id, 3, !body_follows)
        }
    }

    /// Grafana's form POST of `len` bytes to `path` on worker 1, headers only: the body
    /// follows with [`Vm::body`].
    fn post_form(&self, id: u32, path: &str, len: usize) -> Action {
        let headers = form_headers(len);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        self.headers(1, id, "POST", path, &headers, true)
    }

    /// Worker 1 knows alice's token.
    fn cache_alice(&self, id: u32) {
        self.cache_as_alice(id, "alice");
    }

    /// `token` known to be alice's, as after one `/userinfo` answer.
    fn cache_as_alice(&self, id: u32, token: &str) {
        self.get(id, METADATA, Some(token));
        let callouts = self.callouts();
        self.respond(
            callouts[callouts.len() - 1].token,
            Some("200"),
            ALICE_CLAIMS,
        );
    }

    /// Envoy hands over more body: buffered with what came before.
    fn body(&self, id: u32, chunk: &str, end_of_stream: bool) -> Action {
        let size = with_host(|h| {
            h.effective = id;
            let stream = h.streams.get_mut(&id).unwrap();
            stream.body.extend_from_slice(chunk.as_bytes());
            stream.body.len()
        });
        unsafe { proxy_on_request_body(id, size, end_of_stream) }
    }

    fn get(&self, id: u32, path: &str, token: Option<&str>) -> Action {
        self.get_at(1, id, path, token)
    }

    /// A GET on the worker whose root context is `root`.
    fn get_at(&self, root: u32, id: u32, path: &str, token: Option<&str>) -> Action {
        let auth = token.map(|t| format!("Bearer {t}"));
        let extra: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.headers(root, id, "GET", path, &extra, false)
    }

    fn respond(&self, token: u32, status: Option<&str>, body: &str) {
        // Looked up outside `with_host`: a panic while the host is borrowed would take
        // the SDK's panic hook (which logs through the host) down with it.
        let callout = with_host(|h| h.callouts.iter().find(|c| c.token == token).cloned())
            .unwrap_or_else(|| panic!("no callout with token {token}"));
        let context = with_host(|h| {
            let headers = status
                .map(|s| vec![(":status".to_string(), s.as_bytes().to_vec())])
                .unwrap_or_default();
            h.response = Some((headers, body.as_bytes().to_vec()));
            h.effective = callout.context;
            callout.context
        });
        let headers = usize::from(status.is_some());
        unsafe { proxy_on_http_call_response(context, token, headers, body.len(), 0) };
        with_host(|h| h.response = None);
    }

    /// The backend answers request `id`: its headers, then the body in `chunks` (none:
    /// a headers-only answer), buffered as Envoy buffers it while the filter pauses.
    /// Returns the filter's action for the headers and for each chunk.
    fn upstream_answers(&self, id: u32, headers: &[(&str, &str)], chunks: &[&str]) -> Vec<Action> {
        with_host(|h| {
            let stream = h.streams.get_mut(&id).unwrap();
            stream.response_headers = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect();
            h.effective = id;
        });
        let mut actions =
            vec![unsafe { proxy_on_response_headers(id, headers.len(), chunks.is_empty()) }];
        actions.extend(self.upstream_body(id, chunks));
        actions
    }

    /// More of the backend's answer to request `id`, chunk by chunk, the last one ending
    /// it; the filter's action for each.
    fn upstream_body(&self, id: u32, chunks: &[&str]) -> Vec<Action> {
        let mut actions = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let size = with_host(|h| {
                h.effective = id;
                let stream = h.streams.get_mut(&id).unwrap();
                stream.response_body.extend_from_slice(chunk.as_bytes());
                stream.response_body.len()
            });
            let action = unsafe { proxy_on_response_body(id, size, i + 1 == chunks.len()) };
            if action == Action::Continue {
                // Envoy passes what it held on and buffers anew.
                with_host(|h| {
                    let stream = h.streams.get_mut(&id).unwrap();
                    let passed = std::mem::take(&mut stream.response_body);
                    stream.body_passed.extend(passed);
                });
            }
            actions.push(action);
        }
        actions
    }

    fn end(&self, id: u32) {
        with_host(|h| h.effective = id);
        unsafe {
            proxy_on_done(id);
            proxy_on_delete(id);
        }
        with_host(|h| h.dead.push(id));
    }

    fn tick(&self, root: u32) {
        with_host(|h| h.effective = root);
        unsafe { proxy_on_tick(root) };
    }

    /// Envoy's event loop turns: every queue with items calls its root.
    fn turn(&self) {
        let ready: Vec<(u32, u32)> = with_host(|h| {
            h.queues
                .iter()
                .enumerate()
                .filter(|(_, q)| !q.2.is_empty())
                .map(|(i, q)| (q.1, i as u32 + 1))
                .collect()
        });
        for (root, queue) in ready {
            with_host(|h| h.effective = root);
            unsafe { proxy_on_queue_ready(root, queue) };
        }
    }

    fn reply(&self, id: u32) -> Option<Reply> {
        with_host(|h| h.streams.get(&id).and_then(|s| s.reply.clone()))
    }

    fn status(&self, id: u32) -> Option<u32> {
        self.reply(id).map(|r| r.status)
    }

    fn stream(&self, id: u32) -> Stream {
        with_host(|h| h.streams.get(&id).cloned().unwrap())
    }

    fn header(&self, id: u32, name: &str) -> Option<String> {
        let stream = self.stream(id);
        let value = stream.headers.iter().find(|(n, _)| n == name)?;
        Some(String::from_utf8(value.1.clone()).unwrap())
    }

    fn callouts(&self) -> Vec<Callout> {
        with_host(|h| h.callouts.clone())
    }

    fn counter(&self, name: &str) -> u64 {
        let full = format!("promql_tenant_filter.{name}");
        with_host(|h| {
            h.metrics
                .values()
                .find(|(n, _)| *n == full)
                .map_or(0, |m| m.1)
        })
    }

    fn advance(&self, seconds: u64) {
        with_host(|h| h.now_s += seconds);
    }
}

fn error_type(reply: &Reply) -> String {
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["status"], "error", "{body}");
    assert!(reply
        .headers
        .contains(&("content-type".to_string(), "application/json".to_string())));
    body["errorType"].as_str().unwrap().to_string()
}

#[test]
fn bad_configuration_is_refused_and_names_the_field() {
    let vm = Vm::new();
    assert!(!vm.configure(
        1,
        r#"{"tenant_label":"t","identity":{"source":"userinfo","cluster":"c"}}"#
    ));
    let logs = with_host(|h| h.logs.clone());
    assert!(
        logs.iter().any(|l| l.contains("identity.claim")),
        "{logs:?}"
    );
}

#[test]
fn configuration_defines_counters_gauges_flight_keys_and_a_queue() {
    let vm = Vm::new();
    assert!(vm.configure(1, USERINFO_CONFIG));
    let names: Vec<String> = with_host(|h| h.metrics.values().map(|m| m.0.clone()).collect());
    for name in super::COUNTERS
        .iter()
        .chain(&["wasm_memory_bytes", "local_cache_entries"])
    {
        assert!(
            names.contains(&format!("promql_tenant_filter.{name}")),
            "{name}"
        );
    }
    let flight_keys = with_host(|h| h.shared.keys().filter(|k| k.contains(".flight.")).count());
    assert_eq!(flight_keys as u64, crate::flight::FLIGHT_SLOTS);
    assert_eq!(with_host(|h| h.queues.len()), 1);
    assert_eq!(with_host(|h| h.tick_period_ms), 1000);
}

#[test]
fn an_unconfigured_filter_answers_503() {
    let vm = Vm::new();
    assert!(!vm.configure(1, "{"));
    assert_eq!(vm.get(2, METADATA, Some("t")), Action::Pause);
    assert_eq!(vm.status(2), Some(503));
}

#[test]
fn a_refusal_is_a_local_reply_in_prometheus_shape() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    assert_eq!(vm.get(2, METADATA, None), Action::Pause);
    let reply = vm.reply(2).unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(error_type(&reply), "unauthorized");
    assert!(reply
        .headers
        .contains(&("www-authenticate".to_string(), "Bearer".to_string())));
    vm.headers(
        1,
        3,
        "PUT",
        "/api/v1/query",
        &[("authorization", "Bearer t")],
        false,
    );
    let reply = vm.reply(3).unwrap();
    assert_eq!(
        (reply.status, error_type(&reply).as_str()),
        (405, "bad_data")
    );
    assert!(reply
        .headers
        .contains(&("allow".to_string(), "GET, POST".to_string())));
    assert!(vm.callouts().is_empty());
    assert_eq!(vm.counter("requests_denied"), 2);
}

#[test]
fn the_callout_carries_the_token_and_its_answer_resumes_the_request() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    let path = "/api/v1/query?query=up&extra_label=client_id%3D2000";
    assert_eq!(vm.get(2, path, Some("alice-token")), Action::Pause);
    let callouts = vm.callouts();
    assert_eq!(callouts.len(), 1);
    let c = &callouts[0];
    assert_eq!(
        (c.cluster.as_str(), c.context, c.timeout_ms),
        ("oidc", 2, 2000)
    );
    for header in [
        (":method", "GET"),
        (":path", "/userinfo"),
        (":authority", "idp.example"),
        ("authorization", "Bearer alice-token"),
        ("accept", "application/json"),
    ] {
        assert!(
            c.headers
                .contains(&(header.0.to_string(), header.1.to_string())),
            "{header:?}"
        );
    }
    vm.respond(c.token, Some("200"), ALICE_CLAIMS);
    let stream = vm.stream(2);
    assert!(
        stream.reply.is_none() && stream.resumed,
        "{:?}",
        stream.reply
    );
    assert_eq!(
        params(&vm.header(2, ":path").unwrap()),
        owned(&[
            ("query", r#"up{client_id="1999"}"#),
            ("extra_label", "client_id=1999"),
        ])
    );
    // Cached now: the next request goes on from its headers callback.
    assert_eq!(
        vm.get(3, "/api/v1/query?query=up", Some("alice-token")),
        Action::Continue
    );
    assert!(!vm.stream(3).resumed);
    assert_eq!(vm.callouts().len(), 1);
    for (name, value) in [
        ("userinfo_calls", 1),
        ("cache_misses", 1),
        ("cache_hits", 1),
        ("requests_allowed", 2),
    ] {
        assert_eq!(vm.counter(name), value, "{name}");
    }
}

#[test]
fn waiters_on_the_same_worker_are_woken_in_their_own_context() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    for id in 2..6 {
        assert_eq!(
            vm.get(id, "/api/v1/query?query=up", Some("fresh")),
            Action::Pause
        );
    }
    assert_eq!(vm.callouts().len(), 1);
    vm.respond(vm.callouts()[0].token, Some("200"), ALICE_CLAIMS);
    for id in 2..6 {
        let stream = vm.stream(id);
        assert!(stream.resumed, "context {id}");
        let path = vm.header(id, ":path").unwrap();
        assert!(path.contains("1999"), "context {id}: {path}");
    }
}

#[test]
fn the_root_calls_for_waiters_whose_leader_went_away() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.get(2, METADATA, Some("tok"));
    vm.get(3, METADATA, Some("tok"));
    // The leader's client hangs up; the SDK drops its callout's answer.
    vm.end(2);
    vm.respond(1, Some("200"), ALICE_CLAIMS);
    assert!(vm.reply(3).is_none());
    vm.tick(1);
    let callouts = vm.callouts();
    assert_eq!(callouts.len(), 2);
    assert_eq!(callouts[1].context, 1, "the root calls");
    vm.respond(callouts[1].token, Some("200"), ALICE_CLAIMS);
    assert_eq!(vm.status(3), Some(200));
}

#[test]
fn two_workers_share_one_callout_through_shared_data() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.configure(100, USERINFO_CONFIG);
    vm.get_at(1, 2, METADATA, Some("alice"));
    vm.get_at(100, 101, METADATA, Some("alice"));
    assert_eq!(
        vm.callouts().len(),
        1,
        "one /userinfo call for both workers"
    );
    assert_eq!(
        with_host(|h| h.tick_period_ms),
        10,
        "the waiting worker polls fast"
    );
    vm.respond(vm.callouts()[0].token, Some("200"), ALICE_CLAIMS);
    vm.tick(100);
    assert_eq!(vm.status(101), Some(200));
    assert_eq!(with_host(|h| h.tick_period_ms), 1000);
    assert_eq!(vm.counter("userinfo_remote_waits"), 1);
}

#[test]
fn a_callout_that_cannot_start_is_503_in_the_leaders_own_callback() {
    let vm = Vm::new();
    vm.configure(
        1,
        r#"{"tenant_label":"t","identity":{"source":"userinfo","cluster":"missing","claim":"t"}}"#,
    );
    assert_eq!(vm.get(2, METADATA, Some("x")), Action::Pause);
    let reply = vm.reply(2).unwrap();
    assert_eq!(
        (reply.status, error_type(&reply).as_str()),
        (503, "unavailable")
    );
    assert_eq!(vm.counter("idp_errors"), 1);
}

#[test]
fn the_token_never_reaches_the_log() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.get(2, METADATA, Some("sekrit-token"));
    vm.respond(vm.callouts()[0].token, Some("500"), "");
    vm.advance(60);
    vm.get(3, METADATA, Some("sekrit-token"));
    vm.respond(vm.callouts()[1].token, Some("401"), "");
    vm.headers(
        1,
        4,
        "GET",
        METADATA,
        &[("authorization", "Bearer sekrit\"token")],
        false,
    );
    let logs = with_host(|h| h.logs.clone());
    assert!(!logs.is_empty());
    assert!(logs.iter().all(|l| !l.contains("sekrit")), "{logs:?}");
}

#[test]
fn an_oversized_callout_answer_is_not_read() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.get(2, METADATA, Some("tok"));
    let huge = format!(
        r#"{{"pad":"{}"}}"#,
        "x".repeat(crate::identity::MAX_CLAIMS_BYTES)
    );
    vm.respond(vm.callouts()[0].token, Some("200"), &huge);
    assert_eq!(vm.status(2), Some(503));
}

fn form_headers(len: usize) -> Vec<(&'static str, String)> {
    vec![
        ("authorization", "Bearer alice".to_string()),
        ("content-type", FORM.to_string()),
        ("content-length", len.to_string()),
    ]
}

const GRAFANA: &str = "query=up&start=1&end=2&step=15";

#[test]
fn a_form_body_held_with_its_headers_is_replaced_and_both_go_on_together() {
    // With `allow_on_headers_stop_iteration`: the body comes while the headers wait.
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    let action = vm.post_form(2, "/api/v1/query_range", GRAFANA.len());
    assert_eq!(action, Action::Pause);
    assert_eq!(
        vm.body(2, GRAFANA, true),
        Action::Pause,
        "the identity is not in yet"
    );
    vm.respond(vm.callouts()[0].token, Some("200"), ALICE_CLAIMS);
    let stream = vm.stream(2);
    assert!(stream.resumed);
    assert_eq!(
        params(std::str::from_utf8(&stream.body).unwrap()),
        owned(&[
            ("query", r#"up{client_id="1999"}"#),
            ("start", "1"),
            ("end", "2"),
            ("step", "15"),
        ])
    );
    // Judged while the headers wait: they go on with the new body's exact length, so
    // the backend gets it as the client sent it, not chunked.
    assert_eq!(
        vm.header(2, "content-length"),
        Some(stream.body.len().to_string())
    );
    assert!(vm
        .header(2, ":path")
        .unwrap()
        .ends_with("extra_label=client_id%3D1999"));

    // Cached, on a worker that has seen a held body: no turn is asked for; the body
    // comes while the headers wait, and both go on.
    let action = vm.post_form(3, "/api/v1/query_range", GRAFANA.len());
    assert_eq!(action, Action::Pause);
    assert_eq!(vm.body(3, GRAFANA, true), Action::Continue);
    vm.turn();
    assert!(!vm.stream(3).resumed, "the turn finds it gone on already");
}

/// The body stream `id` sent on carries tenant 1999's matcher.
fn body_is_confined(vm: &Vm, id: u32) -> bool {
    String::from_utf8_lossy(&vm.stream(id).body).contains("1999")
}

fn queued_turns() -> usize {
    with_host(|h| h.queues.iter().map(|q| q.2.len()).sum())
}

#[test]
fn a_worker_shown_a_held_body_skips_turns_until_one_goes_without() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    // The body comes while the headers wait for the identity: Envoy hands bodies over.
    vm.post_form(2, "/api/v1/query_range", GRAFANA.len());
    vm.body(2, GRAFANA, true);
    vm.respond(vm.callouts()[0].token, Some("200"), ALICE_CLAIMS);
    assert!(vm.stream(2).resumed);

    // Cached now: no turn asked for; the body comes while the headers are held.
    assert_eq!(
        vm.post_form(3, "/api/v1/query_range", GRAFANA.len()),
        Action::Pause
    );
    assert_eq!(queued_turns(), 0);
    assert_eq!(vm.body(3, GRAFANA, true), Action::Continue);
    assert!(body_is_confined(&vm, 3));

    // A listener without the setting on the same worker: no body comes. The tick lets
    // the headers go after the turn's wait, and the body is judged as it follows.
    assert_eq!(
        vm.post_form(4, "/api/v1/query_range", GRAFANA.len()),
        Action::Pause
    );
    assert_eq!(queued_turns(), 0);
    vm.tick(1);
    assert!(!vm.stream(4).resumed, "held for the turn's wait");
    vm.advance(2);
    vm.tick(1);
    assert!(vm.stream(4).resumed);
    assert_eq!(vm.body(4, GRAFANA, true), Action::Continue);
    assert!(body_is_confined(&vm, 4));

    // And the worker takes turns again.
    assert_eq!(
        vm.post_form(5, "/api/v1/query_range", GRAFANA.len()),
        Action::Pause
    );
    assert_eq!(queued_turns(), 1);
    vm.turn();
    assert!(vm.stream(5).resumed);
}

#[test]
fn without_the_setting_the_headers_go_on_after_the_turn_and_the_body_follows() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.cache_alice(2);
    let action = vm.post_form(3, "/api/v1/query_range", GRAFANA.len());
    assert_eq!(action, Action::Pause);
    assert_eq!(
        vm.header(3, "content-length"),
        Some(GRAFANA.len().to_string()),
        "kept while the body may still come with the headers"
    );
    vm.turn();
    assert!(vm.stream(3).resumed);
    assert_eq!(
        vm.header(3, "content-length"),
        None,
        "removed before the headers go on ahead of a body that may change"
    );
    assert_eq!(vm.body(3, &GRAFANA[..10], false), Action::Pause);
    assert_eq!(vm.body(3, &GRAFANA[10..], true), Action::Continue);
    assert!(body_is_confined(&vm, 3));
}

#[test]
fn a_body_refused_after_the_headers_went_on_is_a_local_reply() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.post_form(2, "/api/v1/query", 9);
    vm.respond(vm.callouts()[0].token, Some("200"), ALICE_CLAIMS);
    assert!(vm.stream(2).resumed);
    assert_eq!(vm.body(2, "query=sum(", true), Action::Pause);
    let reply = vm.reply(2).unwrap();
    assert_eq!(
        (reply.status, error_type(&reply).as_str()),
        (400, "bad_data")
    );
    assert_eq!(vm.counter("bad_queries"), 1);
}

#[test]
fn a_body_over_the_limit_is_refused_as_it_arrives() {
    let vm = Vm::new();
    vm.configure(
        1,
        r#"{"tenant_label":"t","max_body_bytes":10,
            "identity":{"source":"userinfo","cluster":"oidc","claim":"t"}}"#,
    );
    let headers = [("authorization", "Bearer t"), ("content-type", FORM)];
    vm.headers(1, 2, "POST", "/api/v1/query", &headers, true);
    assert_eq!(vm.body(2, "query=up&x=12", false), Action::Pause);
    assert_eq!(vm.status(2), Some(413));
    // The callout's answer comes to a request already answered.
    vm.respond(vm.callouts()[0].token, Some("200"), r#"{"t":"1"}"#);
    assert!(!vm.stream(2).resumed);
}

#[test]
fn a_stalled_body_is_refused_on_the_tick() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.cache_alice(2);
    vm.post_form(3, "/api/v1/query", 100);
    vm.turn();
    vm.body(3, "query=", false);
    vm.advance(crate::lifecycle::BODY_STALL_S);
    vm.tick(1);
    assert!(vm.reply(3).is_none());
    vm.advance(1);
    vm.tick(1);
    let reply = vm.reply(3).unwrap();
    assert_eq!(
        (reply.status, error_type(&reply).as_str()),
        (408, "timeout")
    );
}

#[test]
fn trailers_after_an_unfinished_body_are_refused() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.post_form(2, "/api/v1/query", 8);
    vm.body(2, "query=up", false);
    with_host(|h| h.effective = 2);
    assert_eq!(unsafe { proxy_on_request_trailers(2, 1) }, Action::Pause);
    assert_eq!(vm.status(2), Some(400));
}

#[test]
fn tenant_headers_are_stripped_only_when_present() {
    let vm = Vm::new();
    vm.configure(1, r#"{"tenant_label":"client_id","identity":{"source":"jwt_payload_header","claim":"client_id"}}"#);
    // {"client_id":"9"}
    let jwt = ("x-jwt-payload", "eyJjbGllbnRfaWQiOiI5In0");
    let extra = [jwt, ("accountid", "7"), ("projectid", "8")];
    assert_eq!(
        vm.headers(1, 2, "GET", "/api/v1/status/buildinfo", &extra, false),
        Action::Continue
    );
    let stream = vm.stream(2);
    assert!(stream
        .headers
        .iter()
        .all(|(n, _)| n != "accountid" && n != "projectid"));
    assert!(vm.callouts().is_empty(), "a verified JWT needs no lookup");
}

#[test]
fn footprint_gauges_sum_the_workers_and_withdraw_on_shutdown() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.configure(100, USERINFO_CONFIG);
    vm.get_at(1, 2, METADATA, Some("alice"));
    vm.respond(vm.callouts()[0].token, Some("200"), ALICE_CLAIMS);
    vm.get_at(1, 3, METADATA, Some("bob"));
    vm.respond(vm.callouts()[1].token, Some("200"), ALICE_CLAIMS);
    vm.get_at(100, 101, METADATA, Some("alice"));
    vm.tick(1);
    vm.tick(100);
    // Worker 1 holds alice and bob, worker 2 alice (read from shared data).
    assert_eq!(vm.counter("local_cache_entries"), 3);
    // Within the same second, a faster tick does not report again.
    vm.get_at(100, 102, METADATA, Some("bob"));
    vm.tick(100);
    assert_eq!(vm.counter("local_cache_entries"), 3);
    vm.advance(1);
    vm.tick(100);
    assert_eq!(vm.counter("local_cache_entries"), 4);
    with_host(|h| h.effective = 100);
    unsafe { proxy_on_done(100) };
    assert_eq!(vm.counter("local_cache_entries"), 2);
}

// ---- The response stage: rules and alerts -------------------------------------------

const JWT_CONFIG: &str = r#"{"tenant_label":"client_id","max_response_bytes":2000,
  "identity":{"source":"jwt_payload_header","claim":"client_id"}}"#;
/// `{"client_id":"1999"}`, as `jwt_authn` forwards it.
const ALICE_PAYLOAD: &str = "eyJjbGllbnRfaWQiOiIxOTk5In0";

fn rules_answer(rules: &[(&str, &str)]) -> String {
    let rules: Vec<serde_json::Value> = rules
        .iter()
        .map(|(name, tenant)| {
            serde_json::json!({"name": name, "type": "recording",
                "query": format!("sum(x{{client_id=\"{tenant}\"}})"),
                "labels": {"client_id": tenant}})
        })
        .collect();
    serde_json::json!({"status": "success", "data": {"groups": [{"name": "g", "rules": rules}]}})
        .to_string()
}

fn ask_rules(vm: &Vm, id: u32) {
    let action = vm.headers(
        1,
        id,
        "GET",
        "/api/v1/rules",
        &[
            ("x-jwt-payload", ALICE_PAYLOAD),
            ("accept-encoding", "gzip"),
        ],
        false,
    );
    assert_eq!(action, Action::Continue);
}

fn response_header(vm: &Vm, id: u32, name: &str) -> Option<String> {
    vm.stream(id)
        .response_headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

#[test]
fn a_rules_answer_is_held_whole_and_replaced_by_the_tenants_part() {
    let vm = Vm::new();
    assert!(vm.configure(1, JWT_CONFIG));
    ask_rules(&vm, 2);
    let stream = vm.stream(2);
    assert!(stream.headers.iter().all(|(n, _)| n != "accept-encoding"));
    let answer = rules_answer(&[("mine", "1999"), ("theirs", "2000")]);
    let (first, second) = answer.split_at(answer.len() / 2);
    let actions = vm.upstream_answers(
        2,
        &[
            (":status", "200"),
            ("content-length", "999"),
            ("content-type", "application/json"),
        ],
        &[first, second],
    );
    // With the setting, the body comes while the headers wait for their turn: both go
    // on together once the body is judged.
    assert_eq!(actions, [Action::Pause, Action::Pause, Action::Continue]);
    let passed = String::from_utf8(vm.stream(2).body_passed).unwrap();
    assert!(
        passed.contains("mine") && !passed.contains("theirs"),
        "{passed}"
    );
    assert_eq!(response_header(&vm, 2, ":status").as_deref(), Some("200"));
    assert_eq!(response_header(&vm, 2, "content-length"), None);
    assert_eq!(vm.reply(2), None);
}

#[test]
fn without_the_setting_the_answers_headers_go_on_after_one_turn() {
    let vm = Vm::new();
    assert!(vm.configure(1, JWT_CONFIG));
    ask_rules(&vm, 2);
    // Envoy hands over no body while the headers are held (Istio): the turn comes first.
    let headers = [(":status", "200"), ("content-length", "999")];
    with_host(|h| {
        let stream = h.streams.get_mut(&2).unwrap();
        stream.response_headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        h.effective = 2;
    });
    assert_eq!(
        unsafe { proxy_on_response_headers(2, headers.len(), false) },
        Action::Pause
    );
    assert!(!vm.stream(2).response_resumed);
    vm.turn();
    assert!(
        vm.stream(2).response_resumed,
        "the turn lets the headers go"
    );
    assert_eq!(response_header(&vm, 2, "content-length"), None);
    assert_eq!(response_header(&vm, 2, ":status").as_deref(), Some("200"));
    // Then the body, as it follows them, is held whole and replaced.
    let answer = rules_answer(&[("mine", "1999"), ("theirs", "2000")]);
    let (first, second) = answer.split_at(answer.len() / 2);
    let actions = vm.upstream_body(2, &[first, second]);
    assert_eq!(actions, [Action::Pause, Action::Continue]);
    let passed = String::from_utf8(vm.stream(2).body_passed).unwrap();
    assert!(
        passed.contains("mine") && !passed.contains("theirs"),
        "{passed}"
    );
    assert_eq!(vm.reply(2), None);
}

#[test]
fn an_answer_over_the_bound_is_replaced_at_once_and_the_rest_dropped() {
    let vm = Vm::new();
    assert!(vm.configure(1, JWT_CONFIG));
    ask_rules(&vm, 2);
    let big = rules_answer(&[("theirs", "2000"); 40]);
    assert!(big.len() > 2000);
    let (first, rest) = big.split_at(2100);
    let actions = vm.upstream_answers(2, &[(":status", "200")], &[first, rest]);
    assert_eq!(actions, [Action::Pause, Action::Continue, Action::Continue]);
    let passed = String::from_utf8(vm.stream(2).body_passed).unwrap();
    let body: serde_json::Value = serde_json::from_str(&passed).unwrap();
    assert_eq!(body["errorType"], "internal");
    assert!(!passed.contains("theirs"));
    assert_eq!(response_header(&vm, 2, ":status").as_deref(), Some("502"));
    // Announced larger: refused without reading it.
    ask_rules(&vm, 3);
    let answer = rules_answer(&[("mine", "1999")]);
    vm.upstream_answers(
        3,
        &[(":status", "200"), ("content-length", "5000")],
        &[&answer],
    );
    assert!(!String::from_utf8(vm.stream(3).body_passed)
        .unwrap()
        .contains("mine"));
}

#[test]
fn a_compressed_or_failed_answer_never_passes() {
    let vm = Vm::new();
    assert!(vm.configure(1, JWT_CONFIG));
    let answer = rules_answer(&[("mine", "1999")]);
    for (id, headers) in [
        (2, vec![(":status", "200"), ("content-encoding", "gzip")]),
        (3, vec![(":status", "503")]),
    ] {
        ask_rules(&vm, id);
        vm.upstream_answers(id, &headers, &[&answer]);
        let passed = String::from_utf8(vm.stream(id).body_passed).unwrap();
        assert!(!passed.contains("mine"), "{passed}");
        let body: serde_json::Value = serde_json::from_str(&passed).unwrap();
        assert_eq!(body["status"], "error");
        assert_eq!(response_header(&vm, id, "content-encoding"), None);
    }
    // An answer without a body is answered anew.
    ask_rules(&vm, 4);
    assert_eq!(
        vm.upstream_answers(4, &[(":status", "200")], &[]),
        [Action::Pause]
    );
    assert_eq!(vm.reply(4).map(|r| r.status), Some(502));
}

#[test]
fn other_answers_pass_untouched() {
    let vm = Vm::new();
    assert!(vm.configure(1, JWT_CONFIG));
    let action = vm.headers(
        1,
        2,
        "GET",
        "/api/v1/query?query=up",
        &[
            ("x-jwt-payload", ALICE_PAYLOAD),
            ("accept-encoding", "gzip"),
        ],
        false,
    );
    assert_eq!(action, Action::Continue);
    assert!(vm
        .stream(2)
        .headers
        .iter()
        .any(|(n, _)| n == "accept-encoding"));
    let actions = vm.upstream_answers(2, &[(":status", "200")], &["anything"]);
    assert_eq!(actions, [Action::Continue, Action::Continue]);
    assert_eq!(vm.stream(2).body_passed, b"anything");
}

// ---- Writes: decided at the headers, the body streamed through unread ---------------

const WRITES_JWT_CONFIG: &str = r#"{"tenant_label":"client_id","max_body_bytes":16,
  "writes":"victoriametrics",
  "identity":{"source":"jwt_payload_header","claim":"client_id"}}"#;

/// Envoy hands the filter one more chunk of the request body: it buffers what the
/// filter pauses on, and passes what it lets go (here, into `body_passed`).
fn request_chunk(id: u32, chunk: &[u8], end_of_stream: bool) -> Action {
    let size = with_host(|h| {
        h.effective = id;
        let stream = h.streams.get_mut(&id).unwrap();
        stream.body.extend_from_slice(chunk);
        stream.body.len()
    });
    let action = unsafe { proxy_on_request_body(id, size, end_of_stream) };
    if action == Action::Continue {
        with_host(|h| {
            let stream = h.streams.get_mut(&id).unwrap();
            let passed = std::mem::take(&mut stream.body);
            stream.body_passed.extend(passed);
        });
    }
    action
}

fn path_of(vm: &Vm, id: u32) -> String {
    let stream = vm.stream(id);
    let (_, path) = stream.headers.iter().find(|(n, _)| n == ":path").unwrap();
    String::from_utf8_lossy(path).into_owned()
}

/// A POST of a remote-write client: snappy protobuf, its length announced.
const REMOTE_WRITE_HEADERS: [(&str, &str); 4] = [
    ("x-jwt-payload", ALICE_PAYLOAD),
    ("content-encoding", "snappy"),
    ("content-type", "application/x-protobuf"),
    ("content-length", "40"),
];

#[test]
fn a_write_goes_on_at_its_headers_and_its_body_streams_through_unread() {
    let vm = Vm::new();
    assert!(vm.configure(1, WRITES_JWT_CONFIG));
    let path = "/api/v1/write?extra_label=client_id=2000";
    let action = vm.headers(1, 2, "POST", path, &REMOTE_WRITE_HEADERS, true);
    assert_eq!(action, Action::Continue);
    assert_eq!(
        path_of(&vm, 2),
        "/api/v1/write?extra_label=client_id%3D1999"
    );
    // Larger than max_body_bytes, and not a form: neither matters to a write.
    let chunk = [0xffu8; 20];
    assert_eq!(request_chunk(2, &chunk, false), Action::Continue);
    assert_eq!(request_chunk(2, &chunk, true), Action::Continue);
    let stream = vm.stream(2);
    assert_eq!(
        stream.body_passed,
        [chunk, chunk].concat(),
        "passed untouched"
    );
    assert!(stream.headers.iter().any(|(n, _)| n == "content-length"));
    assert!(vm.reply(2).is_none());
    assert_eq!(vm.counter("writes_allowed"), 1);
    assert_eq!(vm.counter("write_bytes"), 40);
    assert_eq!(vm.counter("writes_denied"), 0);
    assert_eq!(vm.counter("requests_allowed"), 1);
}

#[test]
fn a_write_waiting_for_userinfo_is_held_then_let_go_whole() {
    let vm = Vm::new();
    let config = USERINFO_CONFIG.replacen('{', r#"{"writes":"victoriametrics","#, 1);
    assert!(vm.configure(1, &config));
    let action = vm.headers(
        1,
        2,
        "POST",
        "/influx/write?db=x",
        &[("authorization", "Bearer alice-token")],
        true,
    );
    assert_eq!(action, Action::Pause);
    // Envoy buffers what arrives meanwhile (with allow_on_headers_stop_iteration).
    assert_eq!(request_chunk(2, b"m v=1\n", false), Action::Pause);
    assert_eq!(request_chunk(2, b"m v=2\n", false), Action::Pause);
    let token = vm.callouts()[0].token;
    vm.respond(token, Some("200"), ALICE_CLAIMS);
    assert!(vm.stream(2).resumed);
    assert_eq!(
        path_of(&vm, 2),
        "/influx/write?db=x&extra_label=client_id%3D1999"
    );
    with_host(|h| {
        // Envoy sends on what it held when the request resumes.
        let stream = h.streams.get_mut(&2).unwrap();
        let held = std::mem::take(&mut stream.body);
        stream.body_passed.extend(held);
    });
    assert_eq!(request_chunk(2, b"m v=3\n", true), Action::Continue);
    assert_eq!(vm.stream(2).body_passed, b"m v=1\nm v=2\nm v=3\n");
    assert_eq!(vm.counter("write_bytes"), 18);
    assert_eq!(vm.counter("writes_allowed"), 1);
}

#[test]
fn refused_writes_are_counted_and_answered_in_prometheus_shape() {
    let vm = Vm::new();
    // Root 1: the default, writes denied. Root 11: a second plugin configuration on the
    // same VM, with writes on; counters are shared by name, as Envoy's are.
    assert!(vm.configure(1, JWT_CONFIG));
    assert!(vm.configure(11, WRITES_JWT_CONFIG));
    let refused = |root: u32, id: u32, method: &str, path: &str, payload: &str| {
        let action = vm.headers(root, id, method, path, &[("x-jwt-payload", payload)], true);
        assert_eq!(action, Action::Pause, "{method} {path}");
        vm.reply(id).expect("a refusal")
    };
    let reply = refused(1, 2, "POST", "/api/v1/import", ALICE_PAYLOAD);
    assert_eq!(
        (reply.status, error_type(&reply).as_str()),
        (403, "forbidden")
    );
    assert!(
        reply.body.contains("writes are not enabled"),
        "{}",
        reply.body
    );
    assert_eq!(vm.counter("writes_denied"), 1);
    // {"client_id":["1999","2000"]}: which tenant would the data belong to?
    let both = "eyJjbGllbnRfaWQiOlsiMTk5OSIsIjIwMDAiXX0";
    let reply = refused(11, 12, "POST", "/api/v1/write", both);
    assert_eq!(reply.status, 403);
    assert!(reply.body.contains("several tenants"), "{}", reply.body);
    // Nothing of its body goes on.
    assert_eq!(request_chunk(12, b"data", true), Action::Pause);
    assert!(vm.stream(12).body_passed.is_empty());
    assert_eq!(
        refused(11, 13, "GET", "/api/v1/write", ALICE_PAYLOAD).status,
        405
    );
    assert_eq!(vm.counter("writes_denied"), 3);
    assert_eq!(vm.counter("writes_allowed"), 0);
}

/// Not a test: a driver for profiling the filter's own work per request, natively,
/// under `valgrind --tool=callgrind` (docs/profiling.md). `PROFILE_KIND` is `get`,
/// `getnew` (a new query each time), `post`, `nopromql` (a request with no query),
/// `getjwt` (identity from a `jwt_authn` payload header) or `none` (setup only, to subtract); `PROFILE_N` requests, warm token.
#[test]
#[ignore]
fn profile_grafana_requests() {
    const QUERY: &str = "query=sum%20by%20(service)%20(rate(http_requests_total%7Bjob%3D%22api%22%2Ccode%3D~%225..%22%7D%5B5m%5D))%20%2F%20sum%20by%20(service)%20(rate(http_requests_total%7Bjob%3D%22api%22%7D%5B5m%5D))&start=1764028800&end=1764032400&step=15";
    let kind = std::env::var("PROFILE_KIND").unwrap_or_else(|_| "get".into());
    let n: u32 = std::env::var("PROFILE_N").map_or(1000, |n| n.parse().unwrap());
    // `PROFILE_TOKEN_BYTES`: a token of about that length, shaped like a JWT (a real
    // provider's access token is often a kilobyte), instead of a short opaque one.
    let token = match std::env::var("PROFILE_TOKEN_BYTES")
        .ok()
        .filter(|n| !n.is_empty())
    {
        Some(n) => {
            let n: usize = n.parse().unwrap();
            let part = |len: usize| "eyJhbGciOiJSUzI1NiJ9".repeat(len / 20 + 1)[..len].to_string();
            format!(
                "{}.{}.{}",
                part(n / 8),
                part(n / 2),
                part(n - n / 8 - n / 2 - 2)
            )
        }
        None => "alice".to_string(),
    };
    let vm = Vm::new();
    // `getjwt`: the repeated GET with its identity in Envoy's `jwt_authn` payload header,
    // shaped like an Auth0 access token's claims.
    let payload = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        r#"{"iss":"https://tenant.eu.auth0.com/","sub":"auth0|6543f0c1a2b3c4d5e6f70819","aud":["https://metrics.example.com","https://tenant.eu.auth0.com/userinfo"],"iat":1764028800,"exp":1764115200,"scope":"openid profile email","azp":"Xk3vQ9mZ2bR7tY1uW5pL8nC4dF6gH0jA","client_id":"1999"}"#,
    );
    if kind == "getjwt" {
        vm.configure(1, JWT_CONFIG);
    } else {
        vm.configure(1, USERINFO_CONFIG);
        vm.cache_as_alice(2, &token);
        vm.end(2);
    }
    let answer = [("content-type", "application/json"), (":status", "200")];
    for id in 10..10 + n {
        match kind.as_str() {
            "get" => {
                let path = format!("/api/v1/query_range?{QUERY}");
                assert_eq!(vm.get(id, &path, Some(&token)), Action::Continue);
            }
            // A new query every request: the engine runs, the memo misses.
            "getnew" => {
                let path = format!(
                    "/api/v1/query_range?{}",
                    QUERY.replace("%5B5m%5D", &format!("%5B{id}s%5D"))
                );
                assert_eq!(vm.get(id, &path, Some(&token)), Action::Continue);
            }
            "getjwt" => {
                let path = format!("/api/v1/query_range?{QUERY}");
                let headers = [("x-jwt-payload", payload.as_str())];
                assert_eq!(
                    vm.headers(1, id, "GET", &path, &headers, false),
                    Action::Continue
                );
            }
            // What every request costs, with no PromQL to rewrite.
            "nopromql" => {
                let path = "/api/v1/status/buildinfo";
                assert_eq!(vm.get(id, path, Some(&token)), Action::Continue);
            }
            "post" => {
                let mut headers = form_headers(QUERY.len());
                headers[0].1 = format!("Bearer {token}");
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                vm.headers(1, id, "POST", "/api/v1/query_range", &headers, true);
                assert_eq!(vm.body(id, QUERY, true), Action::Continue);
                vm.turn();
            }
            _ => continue,
        }
        vm.upstream_answers(id, &answer, &["{}"]);
        vm.end(id);
        with_host(|h| {
            h.streams.remove(&id);
            h.dead.clear();
        });
    }
}
