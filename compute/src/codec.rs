//! The one byte reader of the crate's binary formats.
//!
//! Every format states the byte order of each field (`specs/compute.md`, `specs/shard.md`): the
//! training state and checkpoints are little-endian, shard specs, shard results and parameter
//! deltas big-endian. So the reader has no default order: each integer method names its width
//! and order (`u32_le`, `u32_be`, …), and a decoder reads exactly the layout it writes.
//!
//! Every read names its field. A short input is a [`Truncated`] carrying the format, the field,
//! its offset and the bytes it needed and found; each format turns it into its own error type
//! (`From` impls beside each decoder), so the messages of every format stay what they were.

/// The input ended inside a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated<'f> {
    /// The format being decoded, as given to [`Reader::new`].
    pub what: &'static str,
    /// The field being read.
    pub field: &'f str,
    /// Byte offset of the field.
    pub offset: usize,
    /// Bytes the field needs.
    pub needed: usize,
    /// Bytes that were left.
    pub remaining: usize,
}

/// A bounds-checked cursor over an encoding.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    what: &'static str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader of `bytes` from their start; `what` names the format in errors.
    pub fn new(what: &'static str, bytes: &'a [u8]) -> Self {
        Self::at(what, bytes, 0)
    }

    /// A reader of `bytes` from offset `pos` (at most `bytes.len()`).
    pub fn at(what: &'static str, bytes: &'a [u8], pos: usize) -> Self {
        debug_assert!(pos <= bytes.len());
        Self { what, bytes, pos }
    }

    /// The format's name.
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// Offset of the next byte to read.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes.
    pub fn take<'f>(&mut self, field: &'f str, n: usize) -> Result<&'a [u8], Truncated<'f>> {
        let remaining = self.remaining();
        if remaining < n {
            return Err(Truncated {
                what: self.what,
                field,
                offset: self.pos,
                needed: n,
                remaining,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// The next `N` bytes as an array.
    pub fn array<'f, const N: usize>(&mut self, field: &'f str) -> Result<[u8; N], Truncated<'f>> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(field, N)?);
        Ok(a)
    }

    /// One byte.
    pub fn u8<'f>(&mut self, field: &'f str) -> Result<u8, Truncated<'f>> {
        Ok(self.array::<1>(field)?[0])
    }

    /// A big-endian u16.
    pub fn u16_be<'f>(&mut self, field: &'f str) -> Result<u16, Truncated<'f>> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// A big-endian u32.
    pub fn u32_be<'f>(&mut self, field: &'f str) -> Result<u32, Truncated<'f>> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// A big-endian u64.
    pub fn u64_be<'f>(&mut self, field: &'f str) -> Result<u64, Truncated<'f>> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A little-endian u32.
    pub fn u32_le<'f>(&mut self, field: &'f str) -> Result<u32, Truncated<'f>> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    /// A little-endian u64.
    pub fn u64_le<'f>(&mut self, field: &'f str) -> Result<u64, Truncated<'f>> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// `n` little-endian i32s, all checked present before any is decoded.
    pub fn i32s_le<'f>(
        &mut self,
        field: &'f str,
        n: usize,
    ) -> Result<impl ExactSizeIterator<Item = i32> + 'a, Truncated<'f>> {
        let raw = self.take(field, 4 * n)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
    }
}

/// The big-endian two's complement integer of 1 to 8 bytes `b`, sign-extended to i64.
pub fn i64_be_signed(b: &[u8]) -> i64 {
    debug_assert!((1..=8).contains(&b.len()));
    let fill = if b[0] & 0x80 != 0 { 0xff } else { 0 };
    let mut a = [fill; 8];
    a[8 - b.len()..].copy_from_slice(b);
    i64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_order_and_names_the_short_field() {
        let bytes = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
        let mut r = Reader::new("test", &bytes);
        assert_eq!(r.u8("a"), Ok(1));
        assert_eq!(r.u16_be("b"), Ok(0x0203));
        assert_eq!(r.u32_le("c"), Ok(0x0706_0504));
        assert_eq!(r.pos(), 7);
        assert_eq!(
            r.u64_be("d"),
            Err(Truncated {
                what: "test",
                field: "d",
                offset: 7,
                needed: 8,
                remaining: 4
            })
        );
        // A failed read consumes nothing.
        assert_eq!(r.u32_be("e"), Ok(0x0809_0a0b));
        assert_eq!(r.remaining(), 0);
        let mut r = Reader::at("test", &bytes, 3);
        let v: Vec<i32> = r.i32s_le("f", 2).unwrap().collect();
        assert_eq!(v, [0x0706_0504, 0x0b0a_0908]);
    }

    #[test]
    fn sign_extends_every_width() {
        assert_eq!(i64_be_signed(&[0x80]), -128);
        assert_eq!(i64_be_signed(&[0x7f]), 127);
        assert_eq!(i64_be_signed(&[0xff, 0xfe]), -2);
        assert_eq!(i64_be_signed(&(-5i32).to_be_bytes()), -5);
        assert_eq!(i64_be_signed(&i64::MIN.to_be_bytes()), i64::MIN);
    }
}
