//! Avro binary primitives (spec §"Binary Encoding"): zig-zag varint longs, length-prefixed bytes
//! and strings, unions as a branch index, maps as counted blocks ended by 0. The usage event is
//! written and read with these directly, field by field in schema order, because the generic
//! `apache_avro::types::Value` path costs ~20 µs per event on the request path; tests check the
//! bytes are identical to apache-avro's for the same schema.

use super::CodecError;

pub fn long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

pub fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    long(out, b.len() as i64);
    out.extend_from_slice(b);
}

pub fn string(out: &mut Vec<u8>, s: &str) {
    bytes(out, s.as_bytes());
}

pub fn boolean(out: &mut Vec<u8>, b: bool) {
    out.push(u8::from(b));
}

/// `["null", "string"]`.
pub fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => long(out, 0),
        Some(s) => {
            long(out, 1);
            string(out, s);
        }
    }
}

/// A reader over one datum.
pub struct Reader<'a> {
    buf: &'a [u8],
}

fn short(field: &'static str) -> CodecError {
    CodecError::Field(field, "truncated".into())
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn long(&mut self, field: &'static str) -> Result<i64, CodecError> {
        let mut z: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().ok_or_else(|| short(field))?;
            self.buf = rest;
            z |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(CodecError::Field(
            field,
            "varint longer than 10 bytes".into(),
        ))
    }

    pub fn int<T: TryFrom<i64>>(&mut self, field: &'static str) -> Result<T, CodecError> {
        T::try_from(self.long(field)?).map_err(|_| CodecError::Field(field, "out of range".into()))
    }

    pub fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], CodecError> {
        let n: usize = self.int(field)?;
        if n > self.buf.len() {
            return Err(short(field));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn string(&mut self, field: &'static str) -> Result<String, CodecError> {
        let b = self.bytes(field)?;
        String::from_utf8(b.to_vec()).map_err(|_| CodecError::Field(field, "not UTF-8".into()))
    }

    pub fn boolean(&mut self, field: &'static str) -> Result<bool, CodecError> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| short(field))?;
        self.buf = rest;
        match b {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CodecError::Field(field, "not a boolean".into())),
        }
    }

    pub fn opt_string(&mut self, field: &'static str) -> Result<Option<String>, CodecError> {
        match self.long(field)? {
            0 => Ok(None),
            1 => self.string(field).map(Some),
            _ => Err(CodecError::Field(field, "bad union branch".into())),
        }
    }

    /// A map of strings: blocks of `count` entries (a negative count is followed by a byte size).
    pub fn string_map(&mut self, field: &'static str) -> Result<Vec<(String, String)>, CodecError> {
        let mut out = Vec::new();
        loop {
            let mut count = self.long(field)?;
            if count == 0 {
                return Ok(out);
            }
            if count < 0 {
                count = -count;
                self.long(field)?;
            }
            for _ in 0..count {
                let k = self.string(field)?;
                let v = self.string(field)?;
                out.push((k, v));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_round_trip() {
        for n in [0i64, 1, -1, 63, -64, 64, 1 << 40, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            long(&mut out, n);
            assert_eq!(Reader::new(&out).long("n").unwrap(), n);
        }
        let mut out = Vec::new();
        long(&mut out, -2);
        assert_eq!(out, vec![3]);
        assert!(Reader::new(&[0x80]).long("n").is_err());
        assert!(Reader::new(&[0xFF; 11]).long("n").is_err());
    }
}
