//! Reads the principal names of an MIT `FILE:` keytab (format 0x0502), so that a bad keytab is
//! refused at start with a message naming what is wrong, and the realms it serves are known.
//! Key material is skipped, never copied.

/// The principals of a keytab, in file order, duplicates (other kvno or enctype) removed.
pub fn principals(data: &[u8]) -> Result<Vec<String>, String> {
    let mut reader = Reader { data, pos: 0 };
    match reader.u16()? {
        0x0502 => {}
        0x0501 => return Err("keytab format 0x0501 (native byte order) is not supported".into()),
        _ => return Err("not a keytab file".into()),
    }
    let mut names = Vec::new();
    while reader.remaining() >= 4 {
        let size = reader.i32()?;
        if size == 0 {
            break;
        }
        let len = usize::try_from(size.unsigned_abs()).map_err(|_| "keytab entry too large")?;
        let entry = reader.take(len)?;
        // A negative size is a hole left by a deleted entry.
        if size < 0 {
            continue;
        }
        let name = entry_principal(entry)?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

fn entry_principal(entry: &[u8]) -> Result<String, String> {
    let mut r = Reader {
        data: entry,
        pos: 0,
    };
    let components = r.u16()?;
    let realm = r.counted_str()?;
    let mut parts = Vec::with_capacity(usize::from(components));
    for _ in 0..components {
        parts.push(r.counted_str()?);
    }
    if parts.is_empty() || realm.is_empty() {
        return Err("keytab entry with an empty principal".into());
    }
    Ok(format!("{}@{realm}", parts.join("/")))
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.remaining() < n {
            return Err("truncated keytab".into());
        }
        let slice = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn counted_str(&mut self) -> Result<String, String> {
        let len = usize::from(self.u16()?);
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "keytab principal is not UTF-8".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn entry(components: &[&str], realm: &str, kvno: u8) -> Vec<u8> {
        let mut e = (components.len() as u16).to_be_bytes().to_vec();
        e.extend(counted(realm));
        for c in components {
            e.extend(counted(c));
        }
        e.extend(1u32.to_be_bytes()); // name type
        e.extend(0u32.to_be_bytes()); // timestamp
        e.push(kvno);
        e.extend(18u16.to_be_bytes()); // aes256
        e.extend(32u16.to_be_bytes());
        e.extend([0xAB; 32]);
        let mut framed = (e.len() as i32).to_be_bytes().to_vec();
        framed.extend(e);
        framed
    }

    #[test]
    fn lists_principals_skipping_holes_and_duplicates() {
        let mut kt = vec![0x05, 0x02];
        kt.extend(entry(&["HTTP", "localhost"], "EXAMPLE.TEST", 2));
        kt.extend((-10i32).to_be_bytes());
        kt.extend([0u8; 10]);
        kt.extend(entry(&["HTTP", "localhost"], "EXAMPLE.TEST", 3));
        kt.extend(entry(&["HTTP", "127.0.0.1"], "EXAMPLE.TEST", 2));
        assert_eq!(
            principals(&kt).unwrap(),
            ["HTTP/localhost@EXAMPLE.TEST", "HTTP/127.0.0.1@EXAMPLE.TEST"]
        );
    }

    #[test]
    fn refuses_garbage_and_truncation_without_panicking() {
        assert_eq!(principals(&[0x05, 0x02]).unwrap(), Vec::<String>::new());
        assert!(principals(b"").is_err());
        assert!(principals(b"hello world").is_err());
        let mut kt = vec![0x05, 0x02];
        kt.extend(entry(&["HTTP", "x"], "R", 1));
        kt.truncate(kt.len() - 5);
        assert!(principals(&kt).is_err());
        let mut kt = vec![0x05, 0x02];
        kt.extend(i32::MAX.to_be_bytes());
        assert!(principals(&kt).is_err());
        let mut kt = vec![0x05, 0x02];
        kt.extend(i32::MIN.to_be_bytes());
        assert!(principals(&kt).is_err());
    }
}
