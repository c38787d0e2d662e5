//! Lines of a server-sent event stream from a server we do not control, at a cost bounded by what
//! arrives.
//!
//! The OpenAI worker reads its backend's SSE stream line by line. Searching the whole buffer for a
//! newline on every chunk costs the square of a long line, and a line may be as long as the server
//! likes. Here each byte is searched once (the search resumes where the last one stopped), and an
//! unfinished line longer than the cap is the caller's error to report.

/// Splits pushed bytes into lines (without their `\n`).
pub struct LineReader {
    buf: Vec<u8>,
    /// Where the next line starts in `buf`.
    start: usize,
    /// Bytes of `buf` before this are known to hold no newline past `start`.
    scanned: usize,
}

impl Default for LineReader {
    fn default() -> Self {
        Self::new()
    }
}

impl LineReader {
    pub fn new() -> Self {
        Self { buf: Vec::new(), start: 0, scanned: 0 }
    }

    /// Appends a chunk; the lines it completes come out of [`Self::next_line`].
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            // Drop the lines already handed out: only the unfinished one moves.
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line, searching only bytes not searched before.
    pub fn next_line(&mut self) -> Option<&[u8]> {
        let at = self.buf[self.scanned..].iter().position(|b| *b == b'\n');
        match at {
            Some(offset) => {
                let end = self.scanned + offset;
                let line = self.start..end;
                self.start = end + 1;
                self.scanned = self.start;
                Some(&self.buf[line])
            }
            None => {
                self.scanned = self.buf.len();
                None
            }
        }
    }

    /// Bytes of the line still unfinished (after every complete line was taken).
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(r: &mut LineReader) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(l) = r.next_line() {
            out.push(String::from_utf8_lossy(l).into_owned());
        }
        out
    }

    #[test]
    fn lines_split_across_chunks_come_out_whole() {
        let mut r = LineReader::new();
        r.push(b"data: a\n\ndata: b");
        assert_eq!(lines(&mut r), ["data: a", ""]);
        assert_eq!(r.pending(), 7);
        r.push(b"c\ndata: ");
        assert_eq!(lines(&mut r), ["data: bc"]);
        r.push(b"d\n");
        assert_eq!(lines(&mut r), ["data: d"]);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn an_unfinished_line_is_counted_not_searched_again() {
        let mut r = LineReader::new();
        for _ in 0..100 {
            r.push(&[b'x'; 1000]);
            assert!(r.next_line().is_none());
        }
        assert_eq!(r.pending(), 100_000);
        assert_eq!(r.scanned, 100_000, "every byte searched once");
    }
}
