//! Entry logs: the files entries live in once the journal has made them durable.
//!
//! Entries of all segments are appended, interleaved, to the current entry log
//! until it passes a size; then a new one is started. Each entry is stored as
//! `[body_len: u32 LE][crc32c(body): u32 LE][segment_id: u64 LE][entry_id: i64 LE]
//! [base_offset: i64 LE][payload]`, so that reads verify it and compaction can
//! tell whose it is. Reads are positional (`read_at`), so recent entries come
//! from the page cache.

use super::error::StorageError;
use super::journal::sync_dir;
use bytes::{Buf, BufMut, Bytes};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// First bytes of every entry-log file (format version 1).
const ENTRY_LOG_MAGIC: &[u8; 8] = b"STRELG01";
/// Offset of the first entry in an entry-log file.
pub(crate) const ENTRY_LOG_HEADER_LEN: u64 = ENTRY_LOG_MAGIC.len() as u64;
/// Bytes of a stored entry before its payload.
pub(crate) const ENTRY_HEADER_LEN: usize = 4 + 4 + 8 + 8 + 8;
/// File name suffix of entry logs.
const SUFFIX: &str = ".log";
/// Most entry-log files kept open for reads; more are opened on demand.
const MAX_OPEN_LOGS: usize = 256;
/// Read buffer of a sequential entry-log scan.
const SCAN_BUFFER_BYTES: usize = 1 << 20;

/// Where one entry is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    /// Id of the entry-log file.
    pub log_id: u64,
    /// Offset of the stored entry in it.
    pub offset: u64,
    /// Length of the stored entry, header included.
    pub len: u32,
    /// Kafka offset of the entry's first record (so an overwrite can drop its
    /// old offset key).
    pub base_offset: i64,
}

/// One entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredEntry {
    pub segment_id: u64,
    pub entry_id: i64,
    pub base_offset: i64,
    pub payload: Bytes,
}

/// The entry-log directory and the files open for reading.
pub(crate) struct EntryLogs {
    dir: PathBuf,
    open: Mutex<HashMap<u64, Arc<File>>>,
}

impl EntryLogs {
    /// Opens (creating if needed) the entry-log directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create", dir, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Path of entry log `log_id`.
    pub fn path(&self, log_id: u64) -> PathBuf {
        self.dir.join(format!("{log_id:020}{SUFFIX}"))
    }

    /// Ids of the entry logs on disk, ascending.
    pub fn list(&self) -> Result<Vec<u64>, StorageError> {
        let dir = &self.dir;
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))? {
            let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_suffix(SUFFIX))
                .and_then(|id| id.parse::<u64>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Size of entry log `log_id` on disk, header included.
    pub fn file_len(&self, log_id: u64) -> Result<u64, StorageError> {
        let path = self.path(log_id);
        std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|e| StorageError::io("stat entry log", &path, e))
    }

    /// Reads and verifies the entry stored at `location`, which the index says
    /// is entry `entry_id` of segment `segment_id`.
    pub fn read(
        &self,
        location: Location,
        segment_id: u64,
        entry_id: i64,
    ) -> Result<StoredEntry, StorageError> {
        let file = self.file(location.log_id)?;
        let mut buf = vec![0u8; location.len as usize];
        file.read_exact_at(&mut buf, location.offset)
            .map_err(|e| match e.kind() {
                ErrorKind::UnexpectedEof => StorageError::Corrupt(format!(
                    "index: entry {entry_id} of segment {segment_id} lies past the end of \
                     entry log {}",
                    location.log_id
                )),
                _ => StorageError::io("read entry log", &self.path(location.log_id), e),
            })?;
        let entry = decode_entry(Bytes::from(buf)).map_err(|reason| {
            StorageError::Corrupt(format!(
                "entry {entry_id} of segment {segment_id} in entry log {} at {}: {reason}",
                location.log_id, location.offset
            ))
        })?;
        if entry.segment_id != segment_id || entry.entry_id != entry_id {
            return Err(StorageError::Corrupt(format!(
                "index: entry log {} at {} holds entry {} of segment {}, not entry \
                 {entry_id} of segment {segment_id}",
                location.log_id, location.offset, entry.entry_id, entry.segment_id
            )));
        }
        Ok(entry)
    }

    /// Starts entry log `log_id` for appends.
    pub fn create_writer(
        self: &Arc<Self>,
        log_id: u64,
        roll_bytes: u64,
    ) -> Result<EntryLogWriter, StorageError> {
        let file = self.create_file(log_id)?;
        Ok(EntryLogWriter {
            logs: Arc::clone(self),
            log_id,
            file,
            size: ENTRY_LOG_HEADER_LEN,
            staged: Vec::new(),
            roll_bytes,
        })
    }

    /// Deletes entry log `log_id` (readers that hold it open finish their reads).
    pub fn remove(&self, log_id: u64) -> Result<(), StorageError> {
        let path = self.path(log_id);
        {
            // Under the lock, so that no reader opens the file before it is
            // unlinked and caches it after (pinning its space).
            let mut open = self.lock_open();
            open.remove(&log_id);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("delete entry log", &path, e)),
            }
        }
        sync_dir(&self.dir)
    }

    /// Reads entry log `log_id` from its start, calling `visit` with each
    /// whole entry and its location; returns whether the scan reached the end
    /// of the file without a damaged entry.
    pub fn scan(
        &self,
        log_id: u64,
        mut visit: impl FnMut(StoredEntry, Location) -> Result<(), StorageError>,
    ) -> Result<bool, StorageError> {
        let path = self.path(log_id);
        let io = |e| StorageError::io("scan entry log", &path, e);
        let mut file = File::open(&path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut magic = [0u8; ENTRY_LOG_MAGIC.len()];
        if file.read_exact(&mut magic).is_err() || &magic != ENTRY_LOG_MAGIC {
            return Ok(false);
        }
        file.seek(SeekFrom::Start(ENTRY_LOG_HEADER_LEN))
            .map_err(io)?;
        let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, file);
        let mut offset = ENTRY_LOG_HEADER_LEN;
        while offset < file_len {
            let mut header = [0u8; 4];
            if reader.read_exact(&mut header).is_err() {
                return Ok(false);
            }
            let body_len = u64::from(u32::from_le_bytes(header));
            let len = 8 + body_len;
            if body_len < (ENTRY_HEADER_LEN - 8) as u64 || offset + len > file_len {
                return Ok(false);
            }
            let mut buf = Vec::with_capacity(len as usize);
            buf.extend_from_slice(&header);
            buf.resize(len as usize, 0);
            if reader.read_exact(&mut buf[4..]).is_err() {
                return Ok(false);
            }
            let Ok(entry) = decode_entry(Bytes::from(buf)) else {
                return Ok(false);
            };
            let location = Location {
                log_id,
                offset,
                len: len as u32,
                base_offset: entry.base_offset,
            };
            visit(entry, location)?;
            offset += len;
        }
        Ok(true)
    }

    /// The file of entry log `log_id`, opened for reading if it is not yet.
    fn file(&self, log_id: u64) -> Result<Arc<File>, StorageError> {
        let mut open = self.lock_open();
        if let Some(file) = open.get(&log_id) {
            return Ok(Arc::clone(file));
        }
        // Opened under the lock: see `remove`.
        let path = self.path(log_id);
        let file = Arc::new(File::open(&path).map_err(|e| StorageError::io("open", &path, e))?);
        remember(&mut open, log_id, Arc::clone(&file));
        Ok(file)
    }

    fn create_file(&self, log_id: u64) -> Result<Arc<File>, StorageError> {
        let path = self.path(log_id);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StorageError::io("create entry log", &path, e))?;
        file.write_all(ENTRY_LOG_MAGIC)
            .map_err(|e| StorageError::io("write entry log header", &path, e))?;
        sync_dir(&self.dir)?;
        let file = Arc::new(file);
        remember(&mut self.lock_open(), log_id, Arc::clone(&file));
        Ok(file)
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<File>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Caches an open entry log, evicting another past [`MAX_OPEN_LOGS`].
fn remember(open: &mut HashMap<u64, Arc<File>>, log_id: u64, file: Arc<File>) {
    if open.len() >= MAX_OPEN_LOGS {
        // Any one will do: an evicted file is simply opened again when read.
        if let Some(&victim) = open.keys().find(|&&id| id != log_id) {
            open.remove(&victim);
        }
    }
    open.insert(log_id, file);
}

/// Appends entries to the current entry log; entries are staged in memory
/// and written with one write per applied batch.
pub(crate) struct EntryLogWriter {
    logs: Arc<EntryLogs>,
    log_id: u64,
    file: Arc<File>,
    /// Bytes written to the file so far.
    size: u64,
    staged: Vec<u8>,
    roll_bytes: u64,
}

impl EntryLogWriter {
    /// Id of the entry log being appended to.
    pub fn log_id(&self) -> u64 {
        self.log_id
    }

    /// The file being appended to, for syncing it.
    pub fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Stages one entry and returns where it will be; rolls to a new file
    /// first if the current one would pass its size.
    pub fn stage(
        &mut self,
        segment_id: u64,
        entry_id: i64,
        base_offset: i64,
        payload: &[u8],
    ) -> Result<Location, StorageError> {
        let len = ENTRY_HEADER_LEN + payload.len();
        let end = self.size + self.staged.len() as u64;
        if end > ENTRY_LOG_HEADER_LEN && end + len as u64 > self.roll_bytes {
            self.roll()?;
        }
        let location = Location {
            log_id: self.log_id,
            offset: self.size + self.staged.len() as u64,
            len: u32::try_from(len).map_err(|_| {
                StorageError::InvalidRequest(format!("entry of {len} bytes is too large"))
            })?,
            base_offset,
        };
        encode_entry(&mut self.staged, segment_id, entry_id, base_offset, payload);
        Ok(location)
    }

    /// Writes the staged entries to the file (without syncing).
    pub fn flush(&mut self) -> Result<(), StorageError> {
        if self.staged.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(&self.staged, self.size)
            .map_err(|e| StorageError::io("write entry log", &self.logs.path(self.log_id), e))?;
        self.size += self.staged.len() as u64;
        self.staged.clear();
        Ok(())
    }

    /// Flushes and syncs the current file, then starts the next one.
    fn roll(&mut self) -> Result<(), StorageError> {
        self.flush()?;
        self.file
            .sync_data()
            .map_err(|e| StorageError::io("sync entry log", &self.logs.path(self.log_id), e))?;
        let next = self.log_id + 1;
        self.file = self.logs.create_file(next)?;
        self.log_id = next;
        self.size = ENTRY_LOG_HEADER_LEN;
        Ok(())
    }
}

/// Appends the stored form of one entry to `out`.
fn encode_entry(
    out: &mut Vec<u8>,
    segment_id: u64,
    entry_id: i64,
    base_offset: i64,
    payload: &[u8],
) {
    let start = out.len();
    let body_len = (ENTRY_HEADER_LEN - 8 + payload.len()) as u32;
    out.put_u32_le(body_len);
    out.put_u32_le(0);
    out.put_u64_le(segment_id);
    out.put_i64_le(entry_id);
    out.put_i64_le(base_offset);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes and verifies one stored entry; the payload shares `stored`'s memory.
fn decode_entry(mut stored: Bytes) -> Result<StoredEntry, &'static str> {
    if stored.len() < ENTRY_HEADER_LEN {
        return Err("shorter than an entry header");
    }
    let body_len = stored.get_u32_le() as usize;
    let crc = stored.get_u32_le();
    if body_len != stored.len() {
        return Err("length does not match the index");
    }
    if crc32c::crc32c(&stored) != crc {
        return Err("checksum mismatch");
    }
    Ok(StoredEntry {
        segment_id: stored.get_u64_le(),
        entry_id: stored.get_i64_le(),
        base_offset: stored.get_i64_le(),
        payload: stored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(i: i64) -> Vec<u8> {
        vec![i as u8; 10 + i as usize]
    }

    #[test]
    fn staged_entries_read_back_verified() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Arc::new(EntryLogs::open(dir.path()).unwrap());
        let mut writer = logs.create_writer(1, 1 << 20).unwrap();
        let locations: Vec<_> = (0..4)
            .map(|i| writer.stage(9, i, i * 5, &payload(i)).unwrap())
            .collect();
        writer.flush().unwrap();
        for (i, location) in locations.iter().enumerate() {
            let entry = logs.read(*location, 9, i as i64).unwrap();
            assert_eq!(entry.payload, payload(i as i64));
            assert_eq!(entry.base_offset, i as i64 * 5);
        }
        // The index pointing at the wrong entry is caught, not answered.
        assert!(matches!(
            logs.read(locations[1], 9, 2),
            Err(StorageError::Corrupt(_))
        ));
    }

    #[test]
    fn a_flipped_byte_is_corruption_not_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Arc::new(EntryLogs::open(dir.path()).unwrap());
        let mut writer = logs.create_writer(1, 1 << 20).unwrap();
        let location = writer.stage(1, 0, 0, b"hello entry").unwrap();
        writer.flush().unwrap();
        let path = logs.path(1);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
        let fresh = EntryLogs::open(dir.path()).unwrap();
        assert!(matches!(
            fresh.read(location, 1, 0),
            Err(StorageError::Corrupt(_))
        ));
    }

    #[test]
    fn the_writer_rolls_and_scans_see_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Arc::new(EntryLogs::open(dir.path()).unwrap());
        let mut writer = logs.create_writer(1, 200).unwrap();
        let mut locations = Vec::new();
        for i in 0..10 {
            locations.push(writer.stage(3, i, i, &payload(i)).unwrap());
        }
        writer.flush().unwrap();
        let ids = logs.list().unwrap();
        assert!(ids.len() > 1, "{ids:?}");
        let mut scanned = Vec::new();
        for id in ids {
            let clean = logs
                .scan(id, |entry, location| {
                    scanned.push((entry.entry_id, location));
                    Ok(())
                })
                .unwrap();
            assert!(clean);
        }
        let expected: Vec<_> = (0..10).zip(locations).collect();
        assert_eq!(scanned, expected);
    }
}
