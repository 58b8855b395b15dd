//! Journal files: the write-ahead log every change goes to before it is
//! acknowledged.
//!
//! A journal file is a magic header followed by frames `[body_len: u32 LE]
//! [crc32c(body): u32 LE][body]`, one per [`JournalRecord`]. A crash can leave
//! a torn frame at the tail; the checksum finds it and recovery truncates it.
//! Files are named by a growing id and roll at a configured size; whole files
//! before the last checkpoint are deleted.

use super::error::StorageError;
use super::record::JournalRecord;
use crate::config::JournalSync;
use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// First bytes of every journal file (format version 1).
const JOURNAL_MAGIC: &[u8; 8] = b"STRJNL01";
/// Offset of the first frame in a journal file.
pub(crate) const JOURNAL_HEADER_LEN: u64 = JOURNAL_MAGIC.len() as u64;
/// Bytes of a frame before its body.
pub(crate) const FRAME_HEADER_LEN: usize = 8;
/// File name suffix of journal files.
const SUFFIX: &str = ".journal";
/// Read buffer of a journal scan.
const SCAN_BUFFER_BYTES: usize = 1 << 20;

/// A place in the journal: a file and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JournalPosition {
    /// Id of the journal file.
    pub file_id: u64,
    /// Byte offset in that file.
    pub offset: u64,
}

/// Appends the frame of `record` to `out`.
pub(crate) fn frame_into(record: &JournalRecord, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    record.encode_into(out);
    let body = &out[start + FRAME_HEADER_LEN..];
    // Bodies are bounded by max_entry_bytes, which the config keeps below 2 GiB.
    let len = u32::try_from(body.len()).expect("journal records are shorter than 4 GiB");
    let crc = crc32c::crc32c(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Length of the frame of `record`.
pub(crate) fn frame_len(record: &JournalRecord) -> usize {
    FRAME_HEADER_LEN + record.encoded_len()
}

/// Path of journal file `file_id` in `dir`.
pub(crate) fn journal_path(dir: &Path, file_id: u64) -> PathBuf {
    dir.join(format!("{file_id:020}{SUFFIX}"))
}

/// Ids of the journal files in `dir`, ascending.
pub(crate) fn list_journal_files(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut ids = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|name| name.strip_suffix(SUFFIX))
            .and_then(|id| id.parse::<u64>().ok())
        else {
            continue;
        };
        ids.push(id);
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Makes the creation or removal of files in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("sync directory", dir, e))
}

/// Appends frames to the current journal file, rolling to a new file past a size.
pub(crate) struct JournalWriter {
    dir: PathBuf,
    file: File,
    file_id: u64,
    offset: u64,
    file_bytes: u64,
    sync: JournalSync,
}

impl JournalWriter {
    /// Starts a new journal file `file_id` in `dir`.
    pub fn create(
        dir: &Path,
        file_id: u64,
        file_bytes: u64,
        sync: JournalSync,
    ) -> Result<Self, StorageError> {
        let file = create_file(dir, file_id)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            file_id,
            offset: JOURNAL_HEADER_LEN,
            file_bytes,
            sync,
        })
    }

    /// Where the next frame will go.
    pub fn position(&self) -> JournalPosition {
        JournalPosition {
            file_id: self.file_id,
            offset: self.offset,
        }
    }

    /// Writes `frames` with one write and, unless the sync policy says never,
    /// one `fdatasync`; returns the position after them and whether they were
    /// synced.
    pub fn append(&mut self, frames: &[u8]) -> Result<(JournalPosition, bool), StorageError> {
        let len = frames.len() as u64;
        if self.offset > JOURNAL_HEADER_LEN && self.offset + len > self.file_bytes {
            self.roll()?;
        }
        let path = journal_path(&self.dir, self.file_id);
        self.file
            .write_all(frames)
            .map_err(|e| StorageError::io("write journal", &path, e))?;
        self.offset += len;
        let synced = self.sync == JournalSync::Always;
        if synced {
            self.file
                .sync_data()
                .map_err(|e| StorageError::io("sync journal", &path, e))?;
        }
        Ok((self.position(), synced))
    }

    fn roll(&mut self) -> Result<(), StorageError> {
        let next = self.file_id + 1;
        self.file = create_file(&self.dir, next)?;
        self.file_id = next;
        self.offset = JOURNAL_HEADER_LEN;
        Ok(())
    }
}

/// Creates journal file `file_id` with its header, durably.
fn create_file(dir: &Path, file_id: u64) -> Result<File, StorageError> {
    let path = journal_path(dir, file_id);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| StorageError::io("create journal", &path, e))?;
    file.write_all(JOURNAL_MAGIC)
        .and_then(|()| file.sync_all())
        .map_err(|e| StorageError::io("write journal header", &path, e))?;
    sync_dir(dir)?;
    Ok(file)
}

/// How a journal scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Every frame was whole; the file ends at `end`.
    Clean {
        /// Length of the file.
        end: u64,
    },
    /// The frame at `at` is torn or damaged; nothing from there on was read.
    Bad {
        /// Where the bad frame starts.
        at: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads the frames of journal file `path` from `start` (or from the first
/// frame if `start` is before it), calling `visit` with each record and the
/// position after it, until the end of the file or the first bad frame.
pub(crate) fn scan_file(
    path: &Path,
    file_id: u64,
    start: u64,
    mut visit: impl FnMut(JournalRecord, JournalPosition) -> Result<(), StorageError>,
) -> Result<ScanEnd, StorageError> {
    let io = |e| StorageError::io("read journal", path, e);
    let mut file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut magic = [0u8; JOURNAL_MAGIC.len()];
    if read_full(&mut file, &mut magic).map_err(io)? < magic.len() || &magic != JOURNAL_MAGIC {
        return Ok(ScanEnd::Bad {
            at: 0,
            reason: "missing or wrong journal header".into(),
        });
    }
    let mut offset = start.max(JOURNAL_HEADER_LEN);
    if offset > file_len {
        return Ok(ScanEnd::Bad {
            at: file_len,
            reason: format!("checkpoint offset {offset} is past the end ({file_len})"),
        });
    }
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, file);
    loop {
        let mut header = [0u8; FRAME_HEADER_LEN];
        let got = read_full(&mut reader, &mut header).map_err(io)?;
        if got == 0 {
            return Ok(ScanEnd::Clean { end: offset });
        }
        let bad = |reason: String| Ok(ScanEnd::Bad { at: offset, reason });
        if got < FRAME_HEADER_LEN {
            return bad("torn frame header".into());
        }
        let len = u64::from(u32::from_le_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        // The file length bounds what a damaged length field can make us allocate.
        let body_start = offset + FRAME_HEADER_LEN as u64;
        if len == 0 || body_start + len > file_len {
            return bad(format!("frame length {len} does not fit the file"));
        }
        let mut body = vec![0u8; len as usize];
        if read_full(&mut reader, &mut body).map_err(io)? < body.len() {
            return bad("torn frame body".into());
        }
        if crc32c::crc32c(&body) != crc {
            return bad("frame checksum mismatch".into());
        }
        let record = match JournalRecord::decode(Bytes::from(body)) {
            Ok(record) => record,
            Err(e) => return bad(e.to_string()),
        };
        offset = body_start + len;
        visit(record, JournalPosition { file_id, offset })?;
    }
}

/// Cuts journal file `path` at `len`, durably.
pub(crate) fn truncate_file(path: &Path, len: u64) -> Result<(), StorageError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|file| {
            file.set_len(len)?;
            file.sync_all()
        })
        .map_err(|e| StorageError::io("truncate journal", path, e))
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::record::AddRecord;

    fn add(entry_id: i64) -> JournalRecord {
        JournalRecord::Add(AddRecord {
            segment_id: 1,
            entry_id,
            last_add_confirmed: entry_id - 1,
            base_offset: entry_id * 10,
            payload: Bytes::from(vec![entry_id as u8; 100]),
        })
    }

    fn write(dir: &Path, records: &[JournalRecord]) -> JournalPosition {
        let mut writer = JournalWriter::create(dir, 1, 1 << 20, JournalSync::Always).unwrap();
        let mut frames = Vec::new();
        for record in records {
            frames.clear();
            frame_into(record, &mut frames);
            writer.append(&frames).unwrap();
        }
        writer.position()
    }

    fn scan(dir: &Path) -> (Vec<JournalRecord>, ScanEnd) {
        let mut seen = Vec::new();
        let end = scan_file(&journal_path(dir, 1), 1, 0, |record, _| {
            seen.push(record);
            Ok(())
        })
        .unwrap();
        (seen, end)
    }

    #[test]
    fn whole_frames_scan_clean() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<_> = (0..5).map(add).collect();
        let end = write(dir.path(), &records);
        let (seen, scan_end) = scan(dir.path());
        assert_eq!(seen, records);
        assert_eq!(scan_end, ScanEnd::Clean { end: end.offset });
    }

    #[test]
    fn a_torn_tail_stops_the_scan_at_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<_> = (0..3).map(add).collect();
        let end = write(dir.path(), &records);
        let last_start = end.offset - frame_len(&records[2]) as u64;
        // Cut the last frame in half.
        truncate_file(&journal_path(dir.path(), 1), end.offset - 50).unwrap();
        let (seen, scan_end) = scan(dir.path());
        assert_eq!(seen, records[..2]);
        assert!(matches!(scan_end, ScanEnd::Bad { at, .. } if at == last_start));
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<_> = (0..3).map(add).collect();
        write(dir.path(), &records);
        let path = journal_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let second = JOURNAL_HEADER_LEN as usize + frame_len(&records[0]);
        bytes[second + FRAME_HEADER_LEN + 40] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
        let (seen, scan_end) = scan(dir.path());
        assert_eq!(seen, records[..1]);
        assert!(
            matches!(&scan_end, ScanEnd::Bad { at, reason } if *at == second as u64 && reason.contains("checksum")),
            "{scan_end:?}"
        );
    }

    #[test]
    fn the_writer_rolls_to_a_new_file_past_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = JournalWriter::create(dir.path(), 4, 300, JournalSync::Always).unwrap();
        let mut frames = Vec::new();
        for entry_id in 0..5 {
            frames.clear();
            frame_into(&add(entry_id), &mut frames);
            writer.append(&frames).unwrap();
        }
        let files = list_journal_files(dir.path()).unwrap();
        assert!(files.len() >= 2, "{files:?}");
        assert_eq!(files[0], 4);
        assert_eq!(writer.position().file_id, *files.last().unwrap());
    }
}
