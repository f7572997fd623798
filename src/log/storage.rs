//! The narrow door through which the log touches the disk, and its two
//! implementations: [`FsStorage`] (real files, read through memory maps) and
//! [`MemStorage`] (memory, with fault injection and crash images for tests).
//!
//! The log never calls the file system itself; everything goes through
//! [`Storage`], so tests can fail any write or sync and can "crash" a store
//! to exactly what was durable. Storage methods report plain `io::Error`s;
//! the log adds the context (which segment, which step).
//!
//! # Assumptions about the files (`FsStorage`)
//!
//! Segments are read through shared, read-only memory maps and written with
//! positional writes (`pwrite`) of whole batches of frames, made durable
//! with `fdatasync`, not written through the map: there each first touch of
//! a page is a fault, and each `msync` write-protects every dirty page
//! again with a TLB shootdown sent to every core the process runs on.
//! Reads through the map see the writes at once: both go through the same
//! page cache.
//!
//! A map is sound only while no one truncates the mapped file or writes it
//! behind our back: a truncation turns accesses past the new end into
//! SIGBUS, and a foreign write changes bytes that Rust believes are
//! immutable. The store lock (see [`super::lock`]) excludes every other HXO
//! process; nothing else is supposed to touch the directory. A segment is
//! fully preallocated before it is mapped, so writes never need new blocks
//! and a full disk shows up as an error of `posix_fallocate`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use memmap2::{Mmap, UncheckedAdvice};

/// Every access the log makes to its segments.
///
/// Offsets and lengths are in bytes from the start of a segment file.
/// Implementations must make `create_segment` atomic and durable (a crash
/// leaves either no segment or a complete one, header included), and must
/// make `sync_range` return only once the range is durable.
pub trait Storage: Send {
    /// Indices of the segments present, ascending.
    fn list_segments(&mut self) -> io::Result<Vec<u64>>;
    /// Creates segment `index`, preallocated to `size_bytes` (zeros), with
    /// `header` at offset 0; durable, directory entry included, on return.
    /// The segment is open afterwards.
    fn create_segment(&mut self, index: u64, size_bytes: u64, header: &[u8]) -> io::Result<()>;
    /// Opens an existing segment for reading and writing; returns its length.
    fn open_segment(&mut self, index: u64) -> io::Result<u64>;
    /// The bytes of an open segment; `None` if it is not open.
    fn bytes(&self, index: u64) -> Option<&[u8]>;
    /// Stores `data` at `offset` of an open segment. Not durable until
    /// `sync_range` covers it.
    fn write_at(&mut self, index: u64, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes `len` bytes from `offset` of an open segment durable.
    fn sync_range(&mut self, index: u64, offset: u64, len: u64) -> io::Result<()>;
    /// Makes the directory's entries (creations, removals) durable.
    fn sync_dir(&mut self) -> io::Result<()>;
    /// Closes and deletes a segment.
    fn remove_segment(&mut self, index: u64) -> io::Result<()>;
    /// Hint: the range will not be read soon, its memory may be released.
    /// Must not lose data: a later `bytes` still sees it.
    fn release(&self, _index: u64, _offset: u64, _len: u64) {}
    /// Where the store lives, for error messages.
    fn describe(&self) -> String;
}

/// File name of segment `index` (zero-padded so names sort like indices).
pub fn segment_file_name(index: u64) -> String {
    format!("{index:08}.seg")
}

pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() < 8 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

fn invalid_input(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

fn check_range(len: usize, offset: u64, n: u64) -> io::Result<(usize, usize)> {
    let end = offset
        .checked_add(n)
        .filter(|&end| end <= len as u64)
        .ok_or_else(|| invalid_input(format!("range {offset}+{n} outside segment of {len}")))?;
    Ok((offset as usize, end as usize))
}

/// Segments as files in one directory, read through memory maps.
pub struct FsStorage {
    dir: PathBuf,
    // INVARIANT: every map covers the whole of its preallocated segment
    // file, which nothing but this storage writes and nothing truncates
    // (the store lock's job).
    segments: BTreeMap<u64, OpenSegment>,
}

struct OpenSegment {
    file: File,
    map: Mmap,
}

impl FsStorage {
    /// Uses `dir` (created if missing). Leftover `*.seg.tmp` files of an
    /// interrupted segment creation are removed: they were never renamed,
    /// so they never held a record. Call with the store lock held.
    pub fn open(dir: &Path) -> io::Result<FsStorage> {
        fs::create_dir_all(dir)?;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| n.ends_with(".seg.tmp")) {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(FsStorage {
            dir: dir.to_owned(),
            segments: BTreeMap::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn segment(&self, index: u64) -> io::Result<&OpenSegment> {
        self.segments
            .get(&index)
            .ok_or_else(|| invalid_input(format!("segment {index} is not open")))
    }

    fn open_mapped(file: File) -> io::Result<OpenSegment> {
        // SAFETY: the file is a preallocated segment of a store whose lock
        // we hold, so no other process writes or truncates it while mapped
        // (see the module docs). Our own writes (`write_at`) change bytes
        // under the map, but only past the data any reader was handed: the
        // log reads a segment only up to the end of the frames it has
        // written, and writes only after that end (or zeroes a torn tail
        // before anything reads it).
        let map = unsafe { Mmap::map(&file)? };
        Ok(OpenSegment { file, map })
    }
}

/// `posix_fallocate` the whole file, so that a full disk fails here.
fn preallocate(file: &File, size_bytes: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(size_bytes)
        .map_err(|_| invalid_input(format!("segment size {size_bytes} too large")))?;
    // SAFETY: plain syscall on a file descriptor we own for the duration of
    // the call; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc == 0 {
        Ok(())
    } else {
        // posix_fallocate returns the error number instead of setting errno.
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// fsync a directory so that creations, renames and removals in it survive
/// a power loss.
pub fn sync_dir_path(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Storage for FsStorage {
    fn list_segments(&mut self) -> io::Result<Vec<u64>> {
        let mut indices = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            if let Some(index) = entry.file_name().to_str().and_then(parse_segment_file_name) {
                indices.push(index);
            }
        }
        indices.sort_unstable();
        Ok(indices)
    }

    fn create_segment(&mut self, index: u64, size_bytes: u64, header: &[u8]) -> io::Result<()> {
        let path = self.dir.join(segment_file_name(index));
        let tmp = self.dir.join(format!("{}.tmp", segment_file_name(index)));
        let build = || -> io::Result<File> {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            preallocate(&file, size_bytes)?;
            file.write_all_at(header, 0)?;
            file.sync_all()?;
            Ok(file)
        };
        let file = match build() {
            Ok(file) => file,
            Err(e) => {
                // Best effort: do not leave a half-allocated file taking the
                // space that just ran out. Recovery removes it otherwise.
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // The rename is the commit point of the creation.
        fs::rename(&tmp, &path)?;
        sync_dir_path(&self.dir)?;
        self.segments.insert(index, Self::open_mapped(file)?);
        Ok(())
    }

    fn open_segment(&mut self, index: u64) -> io::Result<u64> {
        let path = self.dir.join(segment_file_name(index));
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        // An empty file maps to an empty slice (memmap2 handles it); recovery
        // reports it as damage, its header being missing.
        self.segments.insert(index, Self::open_mapped(file)?);
        Ok(len)
    }

    fn bytes(&self, index: u64) -> Option<&[u8]> {
        self.segments.get(&index).map(|s| &s.map[..])
    }

    fn write_at(&mut self, index: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        let segment = self.segment(index)?;
        check_range(segment.map.len(), offset, data.len() as u64)?;
        // One pwrite (retried on short writes): the kernel copies it into
        // the page cache in ascending order, which the tear analysis of
        // `format` relies on.
        segment.file.write_all_at(data, offset)
    }

    fn sync_range(&mut self, index: u64, offset: u64, len: u64) -> io::Result<()> {
        let segment = self.segment(index)?;
        check_range(segment.map.len(), offset, len)?;
        // fdatasync: the whole file, which costs nothing extra here (only
        // the range since the last sync is dirty), and also persists the
        // unwritten-to-written conversion of the preallocated extents.
        segment.file.sync_data()
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        sync_dir_path(&self.dir)
    }

    fn remove_segment(&mut self, index: u64) -> io::Result<()> {
        self.segments.remove(&index);
        fs::remove_file(self.dir.join(segment_file_name(index)))
    }

    fn release(&self, index: u64, offset: u64, len: u64) {
        let Some(OpenSegment { map, .. }) = self.segments.get(&index) else {
            return;
        };
        let Ok((start, end)) = check_range(map.len(), offset, len) else {
            return;
        };
        if start == end {
            return;
        }
        // SAFETY: MADV_DONTNEED on a *shared file* mapping only drops our
        // page-table entries: the pages stay in the page cache and the next
        // access faults the file's current contents back in. No data is
        // lost and no Rust reference observes a change, unlike on a private
        // or anonymous mapping.
        let result =
            unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start) };
        // Only a hint: failure costs memory, not correctness.
        let _ = result;
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

/// Which operation of a [`MemStorage`] fails, counted from 0 per kind.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// The Nth `write_at` fails with EIO (nothing is written).
    pub fail_write_at: Option<u64>,
    /// The Nth `sync_range`/`sync_dir` fails with EIO (nothing is synced).
    pub fail_sync_at: Option<u64>,
    /// The Nth `create_segment` fails with ENOSPC, as a full disk fails
    /// preallocation (no segment is created).
    pub fail_create_at: Option<u64>,
    /// The process "dies" at the Nth sync point (any sync, creation or
    /// removal): that operation and every later one fail, nothing more
    /// reaches the disk. Take a [`MemDisk::crash`] image afterwards.
    pub halt_at_sync_point: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    writes: u64,
    syncs: u64,
    creates: u64,
    sync_points: u64,
}

struct PendingWrite {
    index: u64,
    offset: usize,
    data: Vec<u8>,
}

#[derive(Default)]
struct DiskState {
    /// What survives a crash.
    durable: BTreeMap<u64, Vec<u8>>,
    /// Writes since they were last covered by a sync, in program order.
    pending: Vec<PendingWrite>,
    faults: Faults,
    counts: Counts,
    halted: bool,
}

/// The "disk" behind a [`MemStorage`]: shared with the test, which keeps it
/// to set faults and take crash images after the log is gone.
#[derive(Clone, Default)]
pub struct MemDisk(Arc<Mutex<DiskState>>);

/// Segments in memory. What the log reads is the "page cache"; the shared
/// [`MemDisk`] holds what was synced plus the unsynced writes in order.
pub struct MemStorage {
    pages: BTreeMap<u64, Vec<u8>>,
    disk: MemDisk,
}

impl Default for MemStorage {
    fn default() -> Self {
        Self::new()
    }
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("injected i/o error: {what}"))
}

fn crashed() -> io::Error {
    io::Error::other("injected crash: the process is gone")
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage {
            pages: BTreeMap::new(),
            disk: MemDisk::default(),
        }
    }

    /// The disk handle, to keep after handing the storage to a log.
    pub fn disk(&self) -> MemDisk {
        self.disk.clone()
    }

    fn from_image(durable: BTreeMap<u64, Vec<u8>>) -> MemStorage {
        let disk = MemDisk::default();
        disk.lock().durable = durable.clone();
        MemStorage {
            pages: durable,
            disk,
        }
    }

    fn page(&self, index: u64) -> io::Result<&Vec<u8>> {
        self.pages
            .get(&index)
            .ok_or_else(|| invalid_input(format!("segment {index} is not open")))
    }
}

impl MemDisk {
    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // A test that panicked while holding the lock has already failed;
        // the state is still usable for its report.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Sync points (syncs, creations, removals) attempted so far.
    pub fn sync_points(&self) -> u64 {
        self.lock().counts.sync_points
    }

    /// Bytes written but not yet synced.
    pub fn pending_bytes(&self) -> u64 {
        self.lock()
            .pending
            .iter()
            .map(|w| w.data.len() as u64)
            .sum()
    }

    /// A fresh storage holding what was durable, plus the first
    /// `unsynced_prefix_bytes` bytes of the unsynced writes in the order they
    /// were made, all durable (a process kill whose page cache was written
    /// back, or a power loss that wrote back a prefix).
    pub fn crash(&self, unsynced_prefix_bytes: u64) -> MemStorage {
        let (image, _) = self.image_with_prefix(unsynced_prefix_bytes);
        MemStorage::from_image(image)
    }

    /// A process kill seen by the next process: the page cache (what the
    /// next process reads) holds the durable bytes plus a prefix of the
    /// unsynced writes, but that prefix is still unsynced on the new disk,
    /// so a later power loss can lose it unless someone syncs it.
    pub fn kill(&self, unsynced_prefix_bytes: u64) -> MemStorage {
        let (pages, kept) = self.image_with_prefix(unsynced_prefix_bytes);
        let state = self.lock();
        let disk = MemDisk::default();
        {
            let mut new_state = disk.lock();
            new_state.durable = state.durable.clone();
            new_state.pending = kept;
        }
        MemStorage { pages, disk }
    }

    fn image_with_prefix(&self, prefix_bytes: u64) -> (BTreeMap<u64, Vec<u8>>, Vec<PendingWrite>) {
        let state = self.lock();
        let mut image = state.durable.clone();
        let mut kept = Vec::new();
        let mut budget = prefix_bytes;
        for w in &state.pending {
            if budget == 0 {
                break;
            }
            let n = usize::try_from(budget.min(w.data.len() as u64)).unwrap_or(w.data.len());
            if let Some(seg) = image.get_mut(&w.index) {
                seg[w.offset..w.offset + n].copy_from_slice(&w.data[..n]);
            }
            kept.push(PendingWrite {
                index: w.index,
                offset: w.offset,
                data: w.data[..n].to_vec(),
            });
            budget -= n as u64;
        }
        (image, kept)
    }

    /// A fresh storage holding what was durable plus a pseudo-random subset
    /// of the unsynced writes, each 512-byte piece kept or lost on its own:
    /// a power loss that wrote back pages out of order.
    pub fn crash_reordered(&self, seed: u64) -> MemStorage {
        let state = self.lock();
        let mut image = state.durable.clone();
        let mut rng = seed | 1;
        for w in &state.pending {
            for (i, piece) in w.data.chunks(512).enumerate() {
                // xorshift64: deterministic per seed, no dependency.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                if rng & 1 == 1 {
                    if let Some(seg) = image.get_mut(&w.index) {
                        let at = w.offset + i * 512;
                        seg[at..at + piece.len()].copy_from_slice(piece);
                    }
                }
            }
        }
        MemStorage::from_image(image)
    }

    /// Lengths of the unsynced writes, in the order they were made.
    pub fn pending_write_lens(&self) -> Vec<u64> {
        self.lock()
            .pending
            .iter()
            .map(|w| w.data.len() as u64)
            .collect()
    }

    /// A copy of the durable bytes of a segment.
    pub fn durable_segment(&self, index: u64) -> Option<Vec<u8>> {
        self.lock().durable.get(&index).cloned()
    }

    /// Indices of the durable segments.
    pub fn durable_segments(&self) -> Vec<u64> {
        self.lock().durable.keys().copied().collect()
    }

    /// A fresh storage from the durable image with one bit flipped (bit rot).
    pub fn image_with_bit_flipped(&self, index: u64, offset: usize, bit: u8) -> MemStorage {
        let mut image = self.lock().durable.clone();
        if let Some(seg) = image.get_mut(&index) {
            seg[offset] ^= 1 << bit;
        }
        MemStorage::from_image(image)
    }
}

impl DiskState {
    fn sync_point(&mut self) -> io::Result<()> {
        if self.halted {
            return Err(crashed());
        }
        let n = self.counts.sync_points;
        self.counts.sync_points += 1;
        if self.faults.halt_at_sync_point == Some(n) {
            self.halted = true;
            return Err(crashed());
        }
        Ok(())
    }

    /// Removes the parts of pending writes to `index` inside [start, end).
    fn trim_pending(&mut self, index: u64, start: usize, end: usize) {
        let mut kept = Vec::with_capacity(self.pending.len());
        for w in self.pending.drain(..) {
            let w_end = w.offset + w.data.len();
            if w.index != index || w_end <= start || w.offset >= end {
                kept.push(w);
                continue;
            }
            if w.offset < start {
                kept.push(PendingWrite {
                    index,
                    offset: w.offset,
                    data: w.data[..start - w.offset].to_vec(),
                });
            }
            if w_end > end {
                kept.push(PendingWrite {
                    index,
                    offset: end,
                    data: w.data[end - w.offset..].to_vec(),
                });
            }
        }
        self.pending = kept;
    }
}

impl Storage for MemStorage {
    fn list_segments(&mut self) -> io::Result<Vec<u64>> {
        if self.disk.lock().halted {
            return Err(crashed());
        }
        Ok(self.pages.keys().copied().collect())
    }

    fn create_segment(&mut self, index: u64, size_bytes: u64, header: &[u8]) -> io::Result<()> {
        let mut disk = self.disk.lock();
        disk.sync_point()?;
        let n = disk.counts.creates;
        disk.counts.creates += 1;
        if disk.faults.fail_create_at == Some(n) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let size = usize::try_from(size_bytes)
            .map_err(|_| invalid_input(format!("segment size {size_bytes} too large")))?;
        if header.len() > size {
            return Err(invalid_input("header longer than the segment".to_owned()));
        }
        let mut bytes = vec![0u8; size];
        bytes[..header.len()].copy_from_slice(header);
        disk.durable.insert(index, bytes.clone());
        disk.pending.retain(|w| w.index != index);
        drop(disk);
        self.pages.insert(index, bytes);
        Ok(())
    }

    fn open_segment(&mut self, index: u64) -> io::Result<u64> {
        if self.disk.lock().halted {
            return Err(crashed());
        }
        Ok(self.page(index)?.len() as u64)
    }

    fn bytes(&self, index: u64) -> Option<&[u8]> {
        self.pages.get(&index).map(|p| &p[..])
    }

    fn write_at(&mut self, index: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut disk = self.disk.lock();
        if disk.halted {
            return Err(crashed());
        }
        let n = disk.counts.writes;
        disk.counts.writes += 1;
        if disk.faults.fail_write_at == Some(n) {
            return Err(eio("write"));
        }
        let page = self
            .pages
            .get_mut(&index)
            .ok_or_else(|| invalid_input(format!("segment {index} is not open")))?;
        let (start, end) = check_range(page.len(), offset, data.len() as u64)?;
        page[start..end].copy_from_slice(data);
        disk.pending.push(PendingWrite {
            index,
            offset: start,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn sync_range(&mut self, index: u64, offset: u64, len: u64) -> io::Result<()> {
        let mut disk = self.disk.lock();
        disk.sync_point()?;
        let n = disk.counts.syncs;
        disk.counts.syncs += 1;
        if disk.faults.fail_sync_at == Some(n) {
            return Err(eio("sync"));
        }
        let page = self.page(index)?;
        let (start, end) = check_range(page.len(), offset, len)?;
        let durable = disk
            .durable
            .get_mut(&index)
            .ok_or_else(|| invalid_input(format!("segment {index} is not on disk")))?;
        durable[start..end].copy_from_slice(&page[start..end]);
        disk.trim_pending(index, start, end);
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        let mut disk = self.disk.lock();
        disk.sync_point()?;
        let n = disk.counts.syncs;
        disk.counts.syncs += 1;
        if disk.faults.fail_sync_at == Some(n) {
            return Err(eio("sync"));
        }
        Ok(())
    }

    fn remove_segment(&mut self, index: u64) -> io::Result<()> {
        let mut disk = self.disk.lock();
        disk.sync_point()?;
        // Simplification: a removal is durable at once (a real one needs the
        // directory synced). The log only removes during compaction, which
        // syncs the directory right after.
        disk.durable.remove(&index);
        disk.pending.retain(|w| w.index != index);
        drop(disk);
        self.pages.remove(&index);
        Ok(())
    }

    fn describe(&self) -> String {
        "<memory>".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_like_indices() {
        assert_eq!(segment_file_name(3), "00000003.seg");
        assert_eq!(parse_segment_file_name("00000003.seg"), Some(3));
        assert_eq!(parse_segment_file_name("123456789.seg"), Some(123_456_789));
        assert_eq!(parse_segment_file_name("3.seg"), None);
        assert_eq!(parse_segment_file_name("00000003.seg.tmp"), None);
        assert_eq!(parse_segment_file_name("LOCK"), None);
    }

    #[test]
    fn mem_crash_keeps_synced_bytes_and_a_prefix_of_the_rest() {
        let mut s = MemStorage::new();
        let disk = s.disk();
        s.create_segment(0, 4096, b"HDR").unwrap();
        s.write_at(0, 100, b"abc").unwrap();
        s.sync_range(0, 100, 3).unwrap();
        s.write_at(0, 103, b"defg").unwrap();
        s.write_at(0, 107, b"hi").unwrap();
        assert_eq!(disk.pending_bytes(), 6);

        let mut crashed = disk.crash(0);
        let bytes = crashed.bytes(0).unwrap();
        assert_eq!(&bytes[..3], b"HDR");
        assert_eq!(&bytes[100..110], b"abc\0\0\0\0\0\0\0");
        assert_eq!(crashed.list_segments().unwrap(), vec![0]);

        let crashed = disk.crash(5);
        assert_eq!(&crashed.bytes(0).unwrap()[100..110], b"abcdefgh\0\0");
        let crashed = disk.crash(u64::MAX);
        assert_eq!(&crashed.bytes(0).unwrap()[100..110], b"abcdefghi\0");
    }

    #[test]
    fn mem_sync_trims_partially_covered_writes() {
        let mut s = MemStorage::new();
        let disk = s.disk();
        s.create_segment(0, 4096, b"").unwrap();
        s.write_at(0, 10, b"0123456789").unwrap();
        s.sync_range(0, 13, 4).unwrap();
        // Pending: "012" at 10 and "789" at 17.
        assert_eq!(disk.pending_bytes(), 6);
        let crashed = disk.crash(4);
        assert_eq!(&crashed.bytes(0).unwrap()[10..20], b"01234567\0\0");
    }

    #[test]
    fn mem_faults_fire_once_at_their_index() {
        let mut s = MemStorage::new();
        let disk = s.disk();
        disk.set_faults(Faults {
            fail_write_at: Some(1),
            fail_sync_at: Some(0),
            fail_create_at: Some(1),
            halt_at_sync_point: None,
        });
        s.create_segment(0, 4096, b"").unwrap();
        let e = s.create_segment(1, 4096, b"").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        s.write_at(0, 0, b"a").unwrap();
        assert!(s.write_at(0, 1, b"b").is_err());
        s.write_at(0, 1, b"c").unwrap();
        assert!(s.sync_range(0, 0, 2).is_err());
        s.sync_range(0, 0, 2).unwrap();
        assert_eq!(&disk.crash(0).bytes(0).unwrap()[..2], b"ac");
    }

    #[test]
    fn mem_halt_stops_everything_after_the_sync_point() {
        let mut s = MemStorage::new();
        let disk = s.disk();
        disk.set_faults(Faults {
            halt_at_sync_point: Some(1),
            ..Faults::default()
        });
        s.create_segment(0, 4096, b"").unwrap();
        s.write_at(0, 0, b"a").unwrap();
        assert!(s.sync_range(0, 0, 1).is_err());
        assert!(s.write_at(0, 1, b"b").is_err());
        assert!(s.sync_dir().is_err());
        assert_eq!(disk.sync_points(), 2);
        assert_eq!(disk.pending_bytes(), 1);
    }

    #[test]
    fn fs_storage_creates_preallocated_segments_and_syncs() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = FsStorage::open(tmp.path()).unwrap();
        fs::write(tmp.path().join("00000009.seg.tmp"), b"junk").unwrap();
        let mut s2 = FsStorage::open(tmp.path()).unwrap();
        assert!(!tmp.path().join("00000009.seg.tmp").exists());
        s.create_segment(0, 8192, b"HEADER").unwrap();
        assert_eq!(
            fs::metadata(tmp.path().join("00000000.seg")).unwrap().len(),
            8192
        );
        s.write_at(0, 4000, b"xyz").unwrap();
        s.sync_range(0, 4000, 3).unwrap();
        s.release(0, 0, 8192);
        assert_eq!(&s.bytes(0).unwrap()[4000..4003], b"xyz");
        assert!(s.write_at(0, 8190, b"xyz").is_err());
        assert_eq!(s2.list_segments().unwrap(), vec![0]);
        assert_eq!(s2.open_segment(0).unwrap(), 8192);
        assert_eq!(&s2.bytes(0).unwrap()[..6], b"HEADER");
        assert_eq!(&s2.bytes(0).unwrap()[4000..4003], b"xyz");
        s.remove_segment(0).unwrap();
        assert!(s.list_segments().unwrap().is_empty());
    }
}
