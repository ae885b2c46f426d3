//! A proxy-wasm HTTP filter that lets every request through untouched.
//!
//! `make bench` runs Envoy with it to measure the floor under any filter built on the
//! same SDK: the VM entries for each stream's callbacks and the context bookkeeping.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NullRoot) });
}}

struct NullRoot;

impl Context for NullRoot {}

impl RootContext for NullRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NullStream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct NullStream;

impl Context for NullStream {}

impl HttpContext for NullStream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
}
