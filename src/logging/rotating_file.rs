//! The `LOG_FILE` writer: the file named is the file written, and old contents move to `NAME.1`,
//! `NAME.2`, ... (newest first), at most `LOG_MAX_FILES` of them, when the file passes a size or a
//! UTC day ends — logrotate's numbering, so `tail -F NAME` and log shippers follow one path.
//!
//! tracing-appender's rolling writer names every file after its date (`miner.log.2026-11-25`), so
//! the path an operator configured never exists; it has no size trigger either. This writer is
//! wrapped in `tracing_appender::non_blocking`, which keeps file I/O off the request path.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// When the file is moved aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// When a write would take the file past this many bytes.
    Size(u64),
    /// At the first write of a new UTC day.
    Daily,
    /// Never: the file grows (for an external logrotate with `copytruncate`).
    Never,
}

impl Rotation {
    /// `daily`, `never`, or a size: `100MB`, `512KB`, `1GB`, or bytes.
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim().to_ascii_lowercase();
        match t.as_str() {
            "daily" | "day" => return Some(Self::Daily),
            "never" | "off" | "none" => return Some(Self::Never),
            _ => {}
        }
        let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
        let n: u64 = digits.parse().ok()?;
        let mult = match unit.trim() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            _ => return None,
        };
        n.checked_mul(mult).filter(|&b| b > 0).map(Self::Size)
    }
}

/// The days since the epoch, UTC: the day a daily file belongs to.
fn utc_day(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400)
}

pub struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    /// Old files kept beside the live one (`NAME.1` ..= `NAME.{max_files}`).
    max_files: usize,
    file: File,
    len: u64,
    day: u64,
}

/// A log file is created 0640 (owner and group; the process umask may narrow it further): its
/// lines name validators, peers and backends, which are no business of other users on the host.
fn open_log(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

impl RotatingFile {
    /// Opens (appending to) `path`, creating its directory.
    pub fn open(path: &Path, rotation: Rotation, max_files: usize) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_log(path)?;
        let meta = file.metadata()?;
        // A file left from an earlier day rotates at the first write, as if the miner had run on.
        let day = utc_day(meta.modified().unwrap_or_else(|_| SystemTime::now()));
        Ok(Self { path: path.to_path_buf(), rotation, max_files, file, len: meta.len(), day })
    }

    fn numbered(&self, n: usize) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.max_files == 0 {
            // Keep nothing old: start the file again.
            self.file.set_len(0)?;
        } else {
            let _ = std::fs::remove_file(self.numbered(self.max_files));
            for n in (1..self.max_files).rev() {
                let from = self.numbered(n);
                if from.exists() {
                    std::fs::rename(&from, self.numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.numbered(1))?;
            self.file = open_log(&self.path)?;
        }
        self.len = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let due = match self.rotation {
            Rotation::Size(max) => self.len > 0 && self.len + buf.len() as u64 > max,
            Rotation::Daily => {
                let today = utc_day(SystemTime::now());
                let due = today != self.day && self.len > 0;
                self.day = today;
                due
            }
            Rotation::Never => false,
        };
        if due {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_settings_parse_and_nonsense_is_refused() {
        assert_eq!(Rotation::parse("daily"), Some(Rotation::Daily));
        assert_eq!(Rotation::parse("never"), Some(Rotation::Never));
        assert_eq!(Rotation::parse("100MB"), Some(Rotation::Size(100 << 20)));
        assert_eq!(Rotation::parse("512 kb"), Some(Rotation::Size(512 << 10)));
        assert_eq!(Rotation::parse("4096"), Some(Rotation::Size(4096)));
        for bad in ["", "0", "weekly", "10XB", "-1MB", "99999999999999999999GB"] {
            assert_eq!(Rotation::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_named_file_is_written_and_at_most_max_files_old_ones_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("miner.log");
        let mut w = RotatingFile::open(&path, Rotation::Size(10), 2).unwrap();
        for line in ["line-0001\n", "line-0002\n", "line-0003\n", "line-0004\n"] {
            w.write_all(line.as_bytes()).unwrap();
        }
        w.flush().unwrap();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(path.clone()), "line-0004\n");
        assert_eq!(read(dir.path().join("miner.log.1")), "line-0003\n");
        assert_eq!(read(dir.path().join("miner.log.2")), "line-0002\n");
        assert!(!dir.path().join("miner.log.3").exists(), "line-0001 is past LOG_MAX_FILES");
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["miner.log", "miner.log.1", "miner.log.2"]);
    }

    #[test]
    fn a_file_from_an_earlier_day_rotates_at_the_first_write_of_today() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("miner.log");
        std::fs::write(&path, "yesterday\n").unwrap();
        let yesterday = SystemTime::now() - std::time::Duration::from_secs(86_400);
        File::options().write(true).open(&path).unwrap().set_modified(yesterday).unwrap();
        let mut w = RotatingFile::open(&path, Rotation::Daily, 7).unwrap();
        w.write_all(b"today\n").unwrap();
        w.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "today\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("miner.log.1")).unwrap(), "yesterday\n");
        // And within the day it stays one file.
        w.write_all(b"later\n").unwrap();
        w.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "today\nlater\n");
    }
}
