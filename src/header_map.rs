//! The request headers as the host serializes them, read without trusting the layout.
//!
//! The filter fetches the whole header map in one host call rather than one per name:
//! each call crosses into Envoy and back into the VM to allocate the answer, which was a
//! good part of the filter's fixed cost per request. Names stay bytes: the SDK's own
//! `get_map_bytes` panics on a name that is not UTF-8.

use std::ops::Range;

/// A serialized header map and where each pair sits in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMap {
    serialized: Vec<u8>,
    /// Where each pair's name and value sit in `serialized`.
    pairs: Vec<(Range<usize>, Range<usize>)>,
}

impl HeaderMap {
    /// Reads a map in proxy-wasm's layout: a little-endian u32 count, a u32 name length
    /// and a u32 value length per pair, then each name and each value followed by a NUL.
    /// `None` if the sizes do not add up; never reads out of bounds.
    pub fn parse(serialized: Vec<u8>) -> Option<HeaderMap> {
        let pairs = pair_ranges(&serialized)?;
        Some(HeaderMap { serialized, pairs })
    }

    /// The first value of header `name` (lower case), as Envoy's own lookup answers.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(n, _)| self.serialized.get(n.clone()) == Some(name.as_bytes()))
            .and_then(|(_, v)| self.serialized.get(v.clone()))
    }
}

fn pair_ranges(serialized: &[u8]) -> Option<Vec<(Range<usize>, Range<usize>)>> {
    if serialized.is_empty() {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        let bytes = serialized.get(at..at.checked_add(4)?)?;
        usize::try_from(u32::from_le_bytes(bytes.try_into().ok()?)).ok()
    };
    let count = word(0)?;
    let mut at = count.checked_mul(8)?.checked_add(4)?;
    // Every pair takes at least 10 bytes, so a forged count cannot reserve much.
    let mut pairs = Vec::with_capacity(count.min(serialized.len() / 10));
    for n in 0..count {
        let name_len = word(4 + n * 8)?;
        let value_len = word(8 + n * 8)?;
        let name = at..at.checked_add(name_len)?;
        at = name.end.checked_add(1)?;
        let value = at..at.checked_add(value_len)?;
        at = value.end.checked_add(1)?;
        if at > serialized.len() {
            return None;
        }
        pairs.push((name, value));
    }
    Some(pairs)
}

/// Serializes pairs in the host's layout: what the host hands the filter.
pub fn serialize(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = u32::try_from(pairs.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes()
        .to_vec();
    for (name, value) in pairs {
        for len in [name.len(), value.len()] {
            out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
        }
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_read_as_the_host_serializes_them() {
        let serialized = serialize(&[
            (":path", b"/api/v1/query?query=up"),
            ("authorization", b"Bearer a"),
            ("authorization", b"Bearer b"),
            ("x-empty", b""),
            ("x-binary", &[0xff, 0, 0xfe]),
        ]);
        let headers = HeaderMap::parse(serialized).unwrap();
        assert_eq!(headers.get(":path"), Some(&b"/api/v1/query?query=up"[..]));
        assert_eq!(
            headers.get("authorization"),
            Some(&b"Bearer a"[..]),
            "the first, as Envoy"
        );
        assert_eq!(headers.get("x-empty"), Some(&b""[..]));
        assert_eq!(headers.get("x-binary"), Some(&[0xff, 0, 0xfe][..]));
        assert_eq!(headers.get("content-type"), None);
        assert_eq!(HeaderMap::parse(Vec::new()).unwrap().get(":path"), None);
    }

    proptest::proptest! {
        #[test]
        fn pairs_never_read_out_of_bounds(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            if let Some(pairs) = pair_ranges(&bytes) {
                for (name, value) in pairs {
                    proptest::prop_assert!(name.end <= bytes.len() && value.end <= bytes.len());
                }
            }
        }

        #[test]
        fn truncated_maps_are_refused(cut in 0usize..60) {
            let serialized = serialize(&[("a", b"bc"), ("de", b"")]);
            let cut = cut.min(serialized.len() - 1);
            if cut > 0 {
                proptest::prop_assert_eq!(pair_ranges(&serialized[..cut]), None);
            }
        }
    }
}
