//! Tests of [`crate::filter`] against an in-process fake of the proxy-wasm host.
//!
//! The SDK talks to Envoy through `extern "C"` imports; on the host target this module
//! defines them, records what the filter asks for (local replies, callouts, header and
//! body edits, shared data, counters), and drives the SDK's exported `proxy_on_*`
//! entry points the way Envoy would. Both the SDK's dispatcher and this fake are
//! thread-local, so every test is an isolated VM.

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
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (n, v) in pairs {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
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
extern "C" fn proxy_register_shared_queue(_n: *const u8, _s: usize, _id: *mut u32) -> Status {
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
extern "C" fn proxy_dequeue_shared_queue(_q: u32, _d: *mut *mut u8, _s: *mut usize) -> Status {
    Status::Empty
}

#[no_mangle]
extern "C" fn proxy_enqueue_shared_queue(_q: u32, _d: *const u8, _s: usize) -> Status {
    Status::NotFound
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
    fn proxy_on_done(context_id: u32) -> bool;
    fn proxy_on_delete(context_id: u32);
}

const USERINFO_CONFIG: &str = r#"{
  "tenant_label": "client_id",
  "identity": {"source": "userinfo", "cluster": "oidc", "authority": "idp.example",
               "claim": "https://example.com/client_id"}
}"#;

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

    /// Starts a request: headers only (a GET) or headers then a body.
    fn request(
        &self,
        root: u32,
        id: u32,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: Option<&str>,
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
            let action = proxy_on_request_headers(id, 3, body.is_none());
            match body {
                Some(body) if action == Action::Pause && self.reply(id).is_none() => {
                    with_host(|h| {
                        h.streams.get_mut(&id).unwrap().body = body.as_bytes().to_vec();
                        h.effective = id;
                    });
                    proxy_on_request_body(id, body.len(), true)
                }
                _ => action,
            }
        }
    }

    fn get(&self, id: u32, path: &str, token: Option<&str>) -> Action {
        self.get_at(1, id, path, token)
    }

    /// A GET on the worker whose root context is `root`.
    fn get_at(&self, root: u32, id: u32, path: &str, token: Option<&str>) -> Action {
        let auth = token.map(|t| format!("Bearer {t}"));
        let extra: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.request(root, id, "GET", path, &extra, None)
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

    fn reply(&self, id: u32) -> Option<Reply> {
        with_host(|h| h.streams.get(&id).and_then(|s| s.reply.clone()))
    }

    fn stream(&self, id: u32) -> Stream {
        with_host(|h| h.streams.get(&id).cloned().unwrap())
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

const METADATA: &str = "/api/v1/metadata";

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
fn good_configuration_defines_the_counters() {
    let vm = Vm::new();
    assert!(vm.configure(1, USERINFO_CONFIG));
    let names: Vec<String> = with_host(|h| h.metrics.values().map(|m| m.0.clone()).collect());
    for name in [
        "requests_allowed",
        "requests_denied",
        "userinfo_calls",
        "cache_hits",
        "cache_misses",
        "idp_errors",
        "bad_queries",
        "writes_allowed",
        "writes_denied",
        "write_bytes",
    ] {
        assert!(
            names.contains(&format!("promql_tenant_filter.{name}")),
            "{name}"
        );
    }
}

#[test]
fn missing_or_malformed_token_is_401_without_a_callout() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    assert_eq!(vm.get(2, METADATA, None), Action::Pause);
    let reply = vm.reply(2).unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(error_type(&reply), "unauthorized");
    assert!(reply
        .headers
        .contains(&("www-authenticate".to_string(), "Bearer".to_string())));
    vm.request(
        1,
        3,
        "GET",
        METADATA,
        &[("authorization", "Basic eA==")],
        None,
    );
    assert_eq!(vm.reply(3).unwrap().status, 401);
    assert!(vm.callouts().is_empty());
    assert_eq!(vm.counter("requests_denied"), 2);
}

#[test]
fn policy_refusals_come_before_identity() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.get(2, "/api/v1/admin/tsdb/delete_series", Some("tok"));
    assert_eq!(vm.reply(2).unwrap().status, 403);
    vm.request(
        1,
        3,
        "PUT",
        "/api/v1/query",
        &[("authorization", "Bearer tok")],
        None,
    );
    let reply = vm.reply(3).unwrap();
    assert_eq!(reply.status, 405);
    assert_eq!(error_type(&reply), "bad_data");
    vm.get(4, "/api/v1/../admin", Some("tok"));
    assert_eq!(vm.reply(4).unwrap().status, 400);
    vm.request(
        1,
        5,
        "POST",
        "/api/v1/query",
        &[
            ("authorization", "Bearer tok"),
            ("content-type", "multipart/form-data"),
            ("content-length", "3"),
        ],
        Some("a=b"),
    );
    assert_eq!(vm.reply(5).unwrap().status, 415);
    vm.request(
        1,
        6,
        "POST",
        "/api/v1/query",
        &[
            ("authorization", "Bearer tok"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-length", "99999999"),
        ],
        Some("a=b"),
    );
    assert_eq!(vm.reply(6).unwrap().status, 413);
    assert!(vm.callouts().is_empty());
}

#[test]
fn userinfo_callout_then_cache_hit() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    assert_eq!(vm.get(2, METADATA, Some("alice-token")), Action::Pause);
    assert!(vm.reply(2).is_none());
    let callouts = vm.callouts();
    assert_eq!(callouts.len(), 1);
    let c = &callouts[0];
    assert_eq!(c.cluster, "oidc");
    assert_eq!(c.timeout_ms, 2000);
    for header in [
        (":method", "GET"),
        (":path", "/userinfo"),
        (":authority", "idp.example"),
        ("authorization", "Bearer alice-token"),
    ] {
        assert!(
            c.headers
                .contains(&(header.0.to_string(), header.1.to_string())),
            "{header:?}"
        );
    }
    vm.respond(
        c.token,
        Some("200"),
        r#"{"sub":"alice","https://example.com/client_id":"1999"}"#,
    );
    let reply = vm.reply(2).unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, crate::api::METADATA_ANSWER)
    );

    // Same token again: answered at once, no second callout.
    assert_eq!(vm.get(3, METADATA, Some("alice-token")), Action::Pause);
    assert_eq!(vm.reply(3).unwrap().status, 200);
    assert_eq!(vm.callouts().len(), 1);
    assert_eq!(vm.counter("userinfo_calls"), 1);
    assert_eq!(vm.counter("cache_hits"), 1);
    assert_eq!(vm.counter("cache_misses"), 1);
    assert_eq!(vm.counter("requests_allowed"), 2);

    // After the TTL the IdP is asked again.
    vm.advance(301);
    vm.get(4, METADATA, Some("alice-token"));
    assert_eq!(vm.callouts().len(), 2);
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
    vm.request(
        1,
        4,
        "GET",
        METADATA,
        &[("authorization", "Bearer sekrit\"token")],
        None,
    );
    let logs = with_host(|h| h.logs.clone());
    assert!(!logs.is_empty());
    assert!(logs.iter().all(|l| !l.contains("sekrit")), "{logs:?}");
}

#[test]
fn concurrent_requests_share_one_callout() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    for id in 2..22 {
        assert_eq!(vm.get(id, METADATA, Some("fresh")), Action::Pause);
    }
    assert_eq!(vm.callouts().len(), 1);
    vm.respond(
        vm.callouts()[0].token,
        Some("200"),
        r#"{"https://example.com/client_id":[1999,2000]}"#,
    );
    for id in 2..22 {
        assert_eq!(vm.reply(id).map(|r| r.status), Some(200), "context {id}");
    }
    assert_eq!(vm.counter("userinfo_calls"), 1);
}

#[test]
fn rejected_tokens_are_cached_for_the_negative_ttl() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.get(2, METADATA, Some("revoked"));
    vm.get(3, METADATA, Some("revoked"));
    vm.respond(vm.callouts()[0].token, Some("401"), "");
    for id in [2, 3] {
        let reply = vm.reply(id).unwrap();
        assert_eq!(
            (reply.status, error_type(&reply).as_str()),
            (401, "unauthorized")
        );
    }
    vm.get(4, METADATA, Some("revoked"));
    assert_eq!(vm.reply(4).unwrap().status, 401);
    assert_eq!(vm.callouts().len(), 1);
    vm.advance(11);
    vm.get(5, METADATA, Some("revoked"));
    assert_eq!(vm.callouts().len(), 2);
}

#[test]
fn idp_failures_are_503_and_remembered_only_briefly() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    let cases: [(Option<&str>, &str); 4] = [
        (Some("503"), ""),
        (Some("429"), ""),
        (None, ""),
        (Some("200"), "<html>"),
    ];
    for (i, (status, body)) in cases.iter().enumerate() {
        let id = 100 + 10 * i as u32;
        vm.get(id, METADATA, Some("tok"));
        assert_eq!(
            vm.callouts().len(),
            i + 1,
            "a failure is asked again after its TTL"
        );
        vm.respond(vm.callouts()[i].token, *status, body);
        let reply = vm.reply(id).unwrap();
        assert_eq!(
            (reply.status, error_type(&reply).as_str()),
            (503, "unavailable")
        );
        // Within `failure_cache_ttl_s` (2 s by default) the token gets 503 at once.
        vm.advance(1);
        vm.get(id + 1, METADATA, Some("tok"));
        assert_eq!(vm.reply(id + 1).map(|r| r.status), Some(503));
        assert_eq!(
            vm.callouts().len(),
            i + 1,
            "no call while the failure is fresh"
        );
        vm.advance(1);
    }
    assert_eq!(vm.counter("idp_errors"), 4);
    // With the TTL at 0, every request asks again.
    let vm0 = Vm;
    vm0.configure(
        150,
        r#"{"tenant_label":"t","identity":{"source":"userinfo","cluster":"oidc","claim":"t","failure_cache_ttl_s":0}}"#,
    );
    for id in [151, 152] {
        vm0.request(
            150,
            id,
            "GET",
            METADATA,
            &[("authorization", "Bearer z")],
            None,
        );
        let callouts = vm0.callouts();
        vm0.respond(callouts[callouts.len() - 1].token, Some("502"), "");
        assert_eq!(vm0.reply(id).map(|r| r.status), Some(503));
    }
    assert_eq!(vm0.callouts().len(), 4 + 2);
    // A cluster Envoy does not know fails at dispatch.
    let vm2 = Vm;
    vm2.configure(
        9,
        r#"{"tenant_label":"t","identity":{"source":"userinfo","cluster":"missing","claim":"t"}}"#,
    );
    vm2.request(
        9,
        10,
        "GET",
        METADATA,
        &[("authorization", "Bearer x")],
        None,
    );
    assert_eq!(vm2.reply(10).unwrap().status, 503);
}

#[test]
fn users_without_the_claim_are_forbidden() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.get(2, METADATA, Some("claimless"));
    vm.respond(vm.callouts()[0].token, Some("200"), r#"{"sub":"carol"}"#);
    let reply = vm.reply(2).unwrap();
    assert_eq!(
        (reply.status, error_type(&reply).as_str()),
        (403, "forbidden")
    );
    // The verdict is cached like any valid answer.
    vm.get(3, METADATA, Some("claimless"));
    assert_eq!(vm.reply(3).unwrap().status, 403);
    assert_eq!(vm.callouts().len(), 1);
}

#[test]
fn another_worker_reads_the_shared_cache() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.get(2, METADATA, Some("alice"));
    vm.respond(
        vm.callouts()[0].token,
        Some("200"),
        r#"{"https://example.com/client_id":"1999"}"#,
    );
    // A second root context stands for another worker: its first level is empty.
    vm.configure(100, USERINFO_CONFIG);
    vm.get_at(100, 101, METADATA, Some("alice"));
    assert_eq!(vm.reply(101).unwrap().status, 200);
    assert_eq!(vm.callouts().len(), 1);
    // A different token in the same slot is not answered from it.
    let cache_slots = with_host(|h| h.shared.keys().filter(|k| !k.contains(".flight.")).count());
    assert_eq!(cache_slots, 1);
    vm.get_at(100, 102, METADATA, Some("mallory"));
    assert!(vm.reply(102).is_none());
    assert_eq!(vm.callouts().len(), 2);
}

const ALICE_CLAIMS: &str = r#"{"https://example.com/client_id":"1999"}"#;

/// Worker 1 (root 1) and worker 2 (root 100), each with a request for a new `token`;
/// returns the callouts made by then.
fn two_workers_ask_for(vm: &Vm, token: &str) -> Vec<Callout> {
    two_workers_configured_ask_for(vm, USERINFO_CONFIG, token)
}

/// The same, with both workers on `config`.
fn two_workers_configured_ask_for(vm: &Vm, config: &str, token: &str) -> Vec<Callout> {
    vm.configure(1, config);
    vm.configure(100, config);
    let auth = format!("Bearer {token}");
    vm.request(1, 2, "GET", METADATA, &[("authorization", &auth)], None);
    vm.request(100, 101, "GET", METADATA, &[("authorization", &auth)], None);
    vm.callouts()
}

#[test]
fn a_worker_waits_for_the_callout_another_worker_makes() {
    let vm = Vm::new();
    let callouts = two_workers_ask_for(&vm, "alice");
    assert_eq!(callouts.len(), 1, "one /userinfo call for both workers");
    assert_eq!(vm.counter("userinfo_remote_waits"), 1);
    assert_eq!(
        with_host(|h| h.tick_period_ms),
        10,
        "the waiting worker polls fast"
    );
    vm.tick(100);
    assert!(vm.reply(101).is_none(), "nothing to read yet");
    vm.respond(callouts[0].token, Some("200"), ALICE_CLAIMS);
    assert_eq!(vm.reply(2).map(|r| r.status), Some(200));
    vm.tick(100);
    assert_eq!(vm.reply(101).map(|r| r.status), Some(200));
    assert_eq!(vm.callouts().len(), 1);
    assert_eq!(
        with_host(|h| h.tick_period_ms),
        1000,
        "and slows down once answered"
    );
    // Both workers now answer the token from their own first level.
    vm.get_at(100, 102, METADATA, Some("alice"));
    assert_eq!(vm.reply(102).map(|r| r.status), Some(200));
    assert_eq!(vm.callouts().len(), 1);
}

#[test]
fn a_failed_remote_callout_answers_the_waiting_worker_too() {
    let vm = Vm::new();
    let callouts = two_workers_ask_for(&vm, "alice");
    vm.respond(callouts[0].token, Some("502"), "");
    assert_eq!(vm.reply(2).map(|r| r.status), Some(503));
    vm.tick(100);
    assert_eq!(vm.reply(101).map(|r| r.status), Some(503));
    assert_eq!(
        vm.callouts().len(),
        1,
        "one call for both workers, failed or not"
    );
}

#[test]
fn a_remote_callout_freed_without_an_answer_is_retried_by_the_waiting_worker() {
    const NO_FAILURE_CACHE: &str = r#"{
  "tenant_label": "client_id",
  "identity": {"source": "userinfo", "cluster": "oidc", "authority": "idp.example",
               "claim": "https://example.com/client_id", "failure_cache_ttl_s": 0}
}"#;
    let vm = Vm::new();
    let callouts = two_workers_configured_ask_for(&vm, NO_FAILURE_CACHE, "alice");
    assert_eq!(callouts.len(), 1);
    // Nothing is cached: the claim is freed with no answer behind it.
    vm.respond(callouts[0].token, Some("502"), "");
    assert_eq!(vm.reply(2).map(|r| r.status), Some(503));
    vm.tick(100);
    let callouts = vm.callouts();
    assert_eq!(callouts.len(), 2);
    assert_eq!(
        callouts[1].context, 100,
        "the waiting worker's root calls itself"
    );
    vm.respond(callouts[1].token, Some("200"), ALICE_CLAIMS);
    assert_eq!(vm.reply(101).map(|r| r.status), Some(200));
}

#[test]
fn a_stale_claim_is_taken_over() {
    let vm = Vm::new();
    two_workers_ask_for(&vm, "alice");
    // Worker 1's callout never answers (its worker died, say): past the claim's
    // deadline, worker 2 calls; before it, it keeps waiting.
    vm.advance(2);
    vm.tick(100);
    assert_eq!(vm.callouts().len(), 1);
    vm.advance(2);
    vm.tick(100);
    let callouts = vm.callouts();
    assert_eq!(callouts.len(), 2);
    vm.respond(callouts[1].token, Some("200"), ALICE_CLAIMS);
    assert_eq!(vm.reply(101).map(|r| r.status), Some(200));
}

#[test]
fn a_leader_hanging_up_frees_its_claim_for_other_workers() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.configure(100, USERINFO_CONFIG);
    vm.get_at(1, 2, METADATA, Some("alice"));
    vm.end(2);
    vm.get_at(100, 101, METADATA, Some("alice"));
    let callouts = vm.callouts();
    assert_eq!(
        callouts.len(),
        2,
        "worker 2 calls at once instead of waiting"
    );
    assert_eq!(vm.counter("userinfo_remote_waits"), 0);
}

#[test]
fn a_waiting_worker_finds_an_answer_stored_meanwhile() {
    let vm = Vm::new();
    let callouts = two_workers_ask_for(&vm, "alice");
    vm.respond(callouts[0].token, Some("200"), ALICE_CLAIMS);
    // A third worker asks after the answer landed: no wait, no call.
    vm.configure(200, USERINFO_CONFIG);
    vm.get_at(200, 201, METADATA, Some("alice"));
    assert_eq!(vm.reply(201).map(|r| r.status), Some(200));
    assert_eq!(vm.callouts().len(), 1);
    assert_eq!(vm.counter("userinfo_remote_waits"), 1);
}

#[test]
fn footprint_gauges_sum_the_workers_and_withdraw_on_shutdown() {
    let vm = Vm::new();
    let callouts = two_workers_ask_for(&vm, "alice");
    vm.respond(callouts[0].token, Some("200"), ALICE_CLAIMS);
    vm.get_at(1, 3, METADATA, Some("bob"));
    vm.respond(vm.callouts()[1].token, Some("200"), ALICE_CLAIMS);
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

#[test]
fn header_pairs_are_read_as_the_host_serializes_them() {
    let pairs: Pairs = vec![
        (":path".into(), b"/api/v1/query?query=up".to_vec()),
        ("authorization".into(), b"Bearer a".to_vec()),
        ("authorization".into(), b"Bearer b".to_vec()),
        ("x-empty".into(), Vec::new()),
        ("x-binary".into(), vec![0xff, 0, 0xfe]),
    ];
    let serialized = encode_pairs(&pairs);
    let headers = super::RequestHeaders {
        pairs: super::header_pairs(&serialized).unwrap(),
        serialized,
    };
    assert_eq!(headers.get(":path"), Some(&b"/api/v1/query?query=up"[..]));
    assert_eq!(
        headers.get("authorization"),
        Some(&b"Bearer a"[..]),
        "the first, as Envoy"
    );
    assert_eq!(headers.get("x-empty"), Some(&b""[..]));
    assert_eq!(headers.get("x-binary"), Some(&[0xff, 0, 0xfe][..]));
    assert_eq!(headers.get("content-type"), None);
    assert_eq!(super::header_pairs(&[]), Some(Vec::new()));
}

proptest::proptest! {
    #[test]
    fn header_pairs_never_read_out_of_bounds(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
        if let Some(pairs) = super::header_pairs(&bytes) {
            for (name, value) in pairs {
                proptest::prop_assert!(name.end <= bytes.len() && value.end <= bytes.len());
            }
        }
    }

    #[test]
    fn truncated_header_maps_are_refused(cut in 0usize..60) {
        let pairs: Pairs = vec![("a".into(), b"bc".to_vec()), ("de".into(), b"".to_vec())];
        let serialized = encode_pairs(&pairs);
        let cut = cut.min(serialized.len() - 1);
        if cut > 0 {
            proptest::prop_assert_eq!(super::header_pairs(&serialized[..cut]), None);
        }
    }
}

#[test]
fn waiters_survive_their_leader_going_away() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.get(2, METADATA, Some("tok"));
    vm.get(3, METADATA, Some("tok"));
    vm.get(4, METADATA, Some("tok"));
    assert_eq!(vm.callouts().len(), 1);
    // The leader's client hangs up; the SDK will drop its callout's response.
    vm.end(2);
    vm.end(4);
    // Its response still comes back, to nobody: nothing happens, nothing panics.
    vm.respond(
        1,
        Some("200"),
        r#"{"https://example.com/client_id":"1999"}"#,
    );
    assert!(vm.reply(3).is_none());
    vm.tick(1);
    let callouts = vm.callouts();
    assert_eq!(callouts.len(), 2);
    assert_eq!(callouts[1].context, 1, "the root context adopts the flight");
    vm.respond(
        callouts[1].token,
        Some("200"),
        r#"{"https://example.com/client_id":"1999"}"#,
    );
    assert_eq!(vm.reply(3).map(|r| r.status), Some(200));
    assert!(vm.reply(4).is_none());
}

#[test]
fn stuck_flights_are_refused_on_tick() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.get(2, METADATA, Some("tok"));
    vm.get(3, METADATA, Some("tok"));
    vm.advance(60);
    vm.tick(1);
    assert_eq!(vm.reply(3).map(|r| r.status), Some(503));
}

#[test]
fn jwt_payload_header_source() {
    use base64::Engine as _;
    let vm = Vm::new();
    vm.configure(
        1,
        r#"{"tenant_label":"client_id","identity":{"source":"jwt_payload_header","claim":"client_id"}}"#,
    );
    let payload =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"client_id":"1999"}"#);
    vm.request(
        1,
        2,
        "GET",
        METADATA,
        &[("x-jwt-payload", payload.as_str())],
        None,
    );
    assert_eq!(vm.reply(2).unwrap().status, 200);
    vm.request(1, 3, "GET", METADATA, &[], None);
    assert_eq!(vm.reply(3).unwrap().status, 401);
    let no_claim = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"sub":"x"}"#);
    vm.request(
        1,
        4,
        "GET",
        METADATA,
        &[("x-jwt-payload", no_claim.as_str())],
        None,
    );
    assert_eq!(vm.reply(4).unwrap().status, 403);
    assert!(vm.callouts().is_empty());
}

#[test]
fn tenant_headers_are_stripped() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.request(
        1,
        2,
        "GET",
        "/api/v1/status/buildinfo",
        &[
            ("authorization", "Bearer t"),
            ("accountid", "7"),
            ("projectid", "8"),
        ],
        None,
    );
    let stream = vm.stream(2);
    assert!(stream
        .headers
        .iter()
        .all(|(n, _)| n != "accountid" && n != "projectid"));
}

#[test]
fn get_query_is_rewritten_and_resumed() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.get(
        2,
        "/api/v1/query?query=up&extra_label=client_id%3D2000",
        Some("alice"),
    );
    vm.respond(
        vm.callouts()[0].token,
        Some("200"),
        r#"{"https://example.com/client_id":"1999"}"#,
    );
    let stream = vm.stream(2);
    assert!(stream.reply.is_none(), "{:?}", stream.reply);
    assert!(stream.resumed);
    let path = stream
        .headers
        .iter()
        .find(|(n, _)| n == ":path")
        .unwrap()
        .1
        .clone();
    let path = String::from_utf8(path).unwrap();
    assert!(
        path.starts_with("/api/v1/query?query=up%7Bclient_id%3D%221999%22%7D"),
        "{path}"
    );
    assert!(path.ends_with("&extra_label=client_id%3D1999"), "{path}");
    assert!(!path.contains("2000"), "{path}");
}

#[test]
fn post_form_body_is_rewritten_and_content_length_removed() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    let body = "query=up&time=1";
    let len = body.len().to_string();
    let headers = [
        ("authorization", "Bearer alice"),
        ("content-type", "application/x-www-form-urlencoded"),
        ("content-length", len.as_str()),
    ];
    assert_eq!(
        vm.request(1, 2, "POST", "/api/v1/query", &headers, Some(body)),
        Action::Pause
    );
    vm.respond(
        vm.callouts()[0].token,
        Some("200"),
        r#"{"https://example.com/client_id":"1999"}"#,
    );
    let stream = vm.stream(2);
    assert!(stream.resumed);
    assert_eq!(
        String::from_utf8(stream.body).unwrap(),
        "query=up%7Bclient_id%3D%221999%22%7D&time=1"
    );
    assert!(stream.headers.iter().all(|(n, _)| n != "content-length"));
    // Cached now: the second POST is rewritten synchronously.
    assert_eq!(
        vm.request(1, 3, "POST", "/api/v1/query", &headers, Some(body)),
        Action::Continue
    );
}

#[test]
fn bad_query_is_400_bad_data() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.get(2, "/api/v1/query?query=sum(", Some("alice"));
    vm.respond(
        vm.callouts()[0].token,
        Some("200"),
        r#"{"https://example.com/client_id":"1999"}"#,
    );
    let reply = vm.reply(2).unwrap();
    assert_eq!(
        (reply.status, error_type(&reply).as_str()),
        (400, "bad_data")
    );
    assert_eq!(vm.counter("bad_queries"), 1);
}

#[test]
fn a_body_that_never_arrives_is_refused_not_hung() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    // Headers announce a body, but no body callback follows (Envoy without
    // `allow_on_headers_stop_iteration`).
    let headers: Vec<(String, Vec<u8>)> = vec![
        (":method".into(), b"POST".to_vec()),
        (":path".into(), b"/api/v1/query".to_vec()),
        ("authorization".into(), b"Bearer t".to_vec()),
        (
            "content-type".into(),
            b"application/x-www-form-urlencoded".to_vec(),
        ),
    ];
    with_host(|h| {
        h.streams.insert(
            2,
            Stream {
                headers,
                ..Stream::default()
            },
        );
        h.effective = 2;
    });
    let action = unsafe {
        proxy_on_context_create(2, 1);
        proxy_on_request_headers(2, 4, false)
    };
    assert_eq!(action, Action::Pause);
    vm.tick(1);
    assert!(vm.reply(2).is_none(), "not before the grace period");
    vm.advance(11);
    vm.tick(1);
    assert_eq!(vm.reply(2).map(|r| r.status), Some(503));
    let logs = with_host(|h| h.logs.clone());
    assert!(logs
        .iter()
        .any(|l| l.contains("allow_on_headers_stop_iteration")));
}

fn forwarded_path(vm: &Vm, id: u32) -> String {
    let stream = vm.stream(id);
    assert!(stream.reply.is_none(), "{:?}", stream.reply);
    let path = stream.headers.iter().find(|(n, _)| n == ":path").unwrap();
    String::from_utf8(path.1.clone()).unwrap()
}

fn decoded_params(path_or_body: &str) -> Vec<(String, String)> {
    let query = path_or_body
        .split_once('?')
        .map_or(path_or_body, |(_, q)| q);
    crate::form::Params::parse(query)
        .unwrap()
        .pairs()
        .iter()
        .map(|p| (p.name().to_string(), p.value().to_string()))
        .collect()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn several_tenants_become_a_regex_matcher_and_extra_filters() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.get(2, "/api/v1/query?query=sum(rate(x[5m]))", Some("multi"));
    vm.respond(
        vm.callouts()[0].token,
        Some("200"),
        r#"{"https://example.com/client_id":["1999",2000]}"#,
    );
    assert_eq!(
        decoded_params(&forwarded_path(&vm, 2)),
        owned(&[
            ("query", r#"sum(rate(x{client_id=~"1999|2000"}[5m]))"#),
            ("extra_filters[]", r#"{client_id=~"1999|2000"}"#),
        ])
    );
}

#[test]
fn every_spelling_and_copy_is_rewritten() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    let headers = [
        ("authorization", "Bearer alice"),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    vm.request(
        1,
        2,
        "POST",
        "/api/v1/query_range?%71uery=a&query=b&extra_filters%5B%5D=%7Bclient_id%3D%222000%22%7D",
        &headers,
        Some("query=c&start=1&query=d&extra_label=client_id%3D2000"),
    );
    vm.respond(
        vm.callouts()[0].token,
        Some("200"),
        r#"{"https://example.com/client_id":"1999"}"#,
    );
    assert_eq!(
        decoded_params(&forwarded_path(&vm, 2)),
        owned(&[
            ("query", r#"a{client_id="1999"}"#),
            ("query", r#"b{client_id="1999"}"#),
            ("extra_label", "client_id=1999"),
        ])
    );
    let body = String::from_utf8(vm.stream(2).body).unwrap();
    assert_eq!(
        decoded_params(&body),
        owned(&[
            ("query", r#"c{client_id="1999"}"#),
            ("start", "1"),
            ("query", r#"d{client_id="1999"}"#),
        ])
    );
}

#[test]
fn series_without_match_gets_the_tenant_selector() {
    let vm = Vm::new();
    vm.configure(1, USERINFO_CONFIG);
    vm.get(2, "/prometheus/api/v1/series?start=1", Some("alice"));
    vm.respond(
        vm.callouts()[0].token,
        Some("200"),
        r#"{"https://example.com/client_id":"1999"}"#,
    );
    let path = forwarded_path(&vm, 2);
    assert!(path.starts_with("/prometheus/api/v1/series?"), "{path}");
    assert_eq!(
        decoded_params(&path),
        owned(&[
            ("start", "1"),
            ("match[]", r#"{client_id="1999"}"#),
            ("extra_label", "client_id=1999"),
        ])
    );
}

#[test]
fn reject_policy_refuses_another_tenants_matcher() {
    let vm = Vm::new();
    vm.configure(
        1,
        r#"{"tenant_label":"client_id","on_conflict":"reject",
            "identity":{"source":"userinfo","cluster":"oidc","claim":"client_id"}}"#,
    );
    vm.get(
        2,
        "/api/v1/query?query=up%7Bclient_id%3D%222000%22%7D",
        Some("alice"),
    );
    vm.respond(
        vm.callouts()[0].token,
        Some("200"),
        r#"{"client_id":"1999"}"#,
    );
    let reply = vm.reply(2).unwrap();
    assert_eq!(
        (reply.status, error_type(&reply).as_str()),
        (403, "forbidden")
    );
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
    let action = vm.request(
        1,
        id,
        "GET",
        "/api/v1/rules",
        &[
            ("x-jwt-payload", ALICE_PAYLOAD),
            ("accept-encoding", "gzip"),
        ],
        None,
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
    let action = vm.request(
        1,
        2,
        "GET",
        "/api/v1/query?query=up",
        &[
            ("x-jwt-payload", ALICE_PAYLOAD),
            ("accept-encoding", "gzip"),
        ],
        None,
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
    let action = vm.request(1, 2, "POST", path, &REMOTE_WRITE_HEADERS, None);
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
    let action = vm.request(
        1,
        2,
        "POST",
        "/influx/write?db=x",
        &[("authorization", "Bearer alice-token")],
        None,
    );
    assert_eq!(action, Action::Pause);
    // Envoy buffers what arrives meanwhile (with allow_on_headers_stop_iteration).
    assert_eq!(request_chunk(2, b"m v=1\n", false), Action::Pause);
    assert_eq!(request_chunk(2, b"m v=2\n", false), Action::Pause);
    let token = vm.callouts()[0].token;
    vm.respond(
        token,
        Some("200"),
        r#"{"sub":"alice","https://example.com/client_id":"1999"}"#,
    );
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
        let action = vm.request(root, id, method, path, &[("x-jwt-payload", payload)], None);
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
