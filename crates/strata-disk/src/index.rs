//! The rocksdb index: chunk locations and checksums, last-writer-wins records, and the disk's
//! format metadata. Every stored value starts with a format version byte.

use crate::buf::{blocks_for, BLOCK};
use crate::{DiskError, Record, Result, Tally, TallyTotals};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, DB};
use std::path::Path;

pub(crate) const CF_CHUNKS: &str = "chunks";
pub(crate) const CF_RECORDS: &str = "records";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_BLOCKS: &str = "blocks";
pub(crate) const CF_TALLIES: &str = "tallies";

/// Key of the format entry in the meta column family.
pub(crate) const META_FORMAT: &[u8] = b"format";

const CHUNK_V1: u8 = 1;
const RECORD_V1: u8 = 1;
const FORMAT_V1: u8 = 1;
const TALLY_V1: u8 = 1;

const TAG_TOMBSTONE: u8 = 0;
const TAG_VALUE: u8 = 1;
/// A live value counted in a tally group: `group_len` (u32 BE) and weight (u64 BE) first.
const TAG_TALLIED: u8 = 2;

/// Memtable size of the volume block index (rocksdb's default is 64 MiB); two of them at
/// most (one filling while the other is flushed).
pub(crate) const BLOCKS_MEMTABLE_BYTES: usize = 256 << 20;

pub(crate) fn open_db(path: &Path) -> Result<DB> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_keep_log_file_num(4);
    let cfs = [CF_CHUNKS, CF_RECORDS, CF_META, CF_BLOCKS, CF_TALLIES]
        .into_iter()
        .map(|name| {
            let mut cf = Options::default();
            if name == CF_BLOCKS {
                // A volume's index takes an entry per 4 KiB block written: 1 GiB of writes
                // fills 16 MiB of memtable. Each memtable flush ends with an fdatasync of its
                // table file, which makes the device write back everything it caches (on a
                // virtual disk: every volume write since the last flush), and volume I/O
                // waits meanwhile. Larger memtables flush a quarter as often.
                cf.set_write_buffer_size(BLOCKS_MEMTABLE_BYTES);
            }
            ColumnFamilyDescriptor::new(name, cf)
        });
    DB::open_cf_descriptors(&opts, path, cfs).map_err(index_err)
}

pub(crate) fn index_err(e: rocksdb::Error) -> DiskError {
    DiskError::Index(e.into_string())
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| DiskError::Index(format!("column family {name} is missing")))
}

/// Where a chunk lives and how to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChunkEntry {
    /// Byte offset in the data file; a multiple of [`BLOCK`]. 0 for an empty chunk.
    pub offset: u64,
    pub len: u32,
    pub blake3: [u8; 32],
    /// crc32c of each 4 KiB block of the chunk (the last one covers only the chunk's bytes).
    pub crcs: Vec<u32>,
}

const CHUNK_HEADER: usize = 1 + 8 + 4 + 32;

impl ChunkEntry {
    pub(crate) fn for_data(offset: u64, data: &[u8], blake3: [u8; 32]) -> Self {
        ChunkEntry {
            offset,
            len: data.len() as u32,
            blake3,
            crcs: data.chunks(BLOCK).map(crc32c::crc32c).collect(),
        }
    }

    pub(crate) fn blocks(&self) -> u64 {
        blocks_for(self.len as usize) as u64
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(CHUNK_HEADER + 4 * self.crcs.len());
        v.push(CHUNK_V1);
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(&self.len.to_be_bytes());
        v.extend_from_slice(&self.blake3);
        for c in &self.crcs {
            v.extend_from_slice(&c.to_be_bytes());
        }
        v
    }

    /// Decodes and checks an entry; `None` if it is not a well-formed version-1 entry.
    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < CHUNK_HEADER || b[0] != CHUNK_V1 {
            return None;
        }
        let offset = u64::from_be_bytes(b[1..9].try_into().ok()?);
        let len = u32::from_be_bytes(b[9..13].try_into().ok()?);
        let blake3: [u8; 32] = b[13..45].try_into().ok()?;
        let rest = &b[CHUNK_HEADER..];
        if len as usize > strata_types::CHUNK_SIZE_BYTES_MAX
            || offset & (BLOCK as u64 - 1) != 0
            || rest.len() != 4 * blocks_for(len as usize)
        {
            return None;
        }
        let crcs = rest
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Some(ChunkEntry {
            offset,
            len,
            blake3,
            crcs,
        })
    }
}

pub(crate) fn encode_record(rec: &Record) -> Vec<u8> {
    let mut v = Vec::with_capacity(22 + rec.value.as_ref().map_or(0, Vec::len));
    v.push(RECORD_V1);
    v.extend_from_slice(&rec.timestamp.to_be_bytes());
    match (&rec.value, rec.tally) {
        (None, _) => v.push(TAG_TOMBSTONE),
        (Some(val), None) => {
            v.push(TAG_VALUE);
            v.extend_from_slice(val);
        }
        (Some(val), Some(t)) => {
            v.push(TAG_TALLIED);
            v.extend_from_slice(&t.group_len.to_be_bytes());
            v.extend_from_slice(&t.weight.to_be_bytes());
            v.extend_from_slice(val);
        }
    }
    v
}

pub(crate) fn decode_record(b: &[u8]) -> Option<Record> {
    if b.len() < 10 || b[0] != RECORD_V1 {
        return None;
    }
    let timestamp = u64::from_be_bytes(b[1..9].try_into().ok()?);
    let (value, tally) = match b[9] {
        TAG_TOMBSTONE if b.len() == 10 => (None, None),
        TAG_VALUE => (Some(b[10..].to_vec()), None),
        TAG_TALLIED if b.len() >= 22 => {
            let tally = Tally {
                group_len: u32::from_be_bytes(b[10..14].try_into().ok()?),
                weight: u64::from_be_bytes(b[14..22].try_into().ok()?),
            };
            (Some(b[22..].to_vec()), Some(tally))
        }
        _ => return None,
    };
    Some(Record {
        timestamp,
        value,
        tally,
    })
}

pub(crate) fn encode_tally(t: &TallyTotals) -> Vec<u8> {
    let mut v = Vec::with_capacity(25);
    v.push(TALLY_V1);
    for n in [t.count, t.weight, t.stamp] {
        v.extend_from_slice(&n.to_be_bytes());
    }
    v
}

pub(crate) fn decode_tally(b: &[u8]) -> Option<TallyTotals> {
    if b.len() != 25 || b[0] != TALLY_V1 {
        return None;
    }
    let n = |i: usize| b[i..i + 8].try_into().ok().map(u64::from_be_bytes);
    Some(TallyTotals {
        count: n(1)?,
        weight: n(9)?,
        stamp: n(17)?,
    })
}

pub(crate) fn corrupt_record(key: &[u8]) -> DiskError {
    DiskError::Index(format!(
        "record {:?} has an undecodable value",
        String::from_utf8_lossy(key)
    ))
}

/// The disk's identity as recorded in the index; must match the data file's superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Format {
    pub instance: [u8; 16],
    pub blocks: u64,
}

impl Format {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = vec![FORMAT_V1];
        v.extend_from_slice(&self.instance);
        v.extend_from_slice(&self.blocks.to_be_bytes());
        v
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != 25 || b[0] != FORMAT_V1 {
            return None;
        }
        Some(Format {
            instance: b[1..17].try_into().ok()?,
            blocks: u64::from_be_bytes(b[17..25].try_into().ok()?),
        })
    }
}

const SUPER_MAGIC: &[u8; 16] = b"strata-disk-data";

/// Block 0 of the data file: magic, format version, instance id, block count, crc32c.
pub(crate) fn encode_superblock(f: &Format) -> Vec<u8> {
    let mut v = SUPER_MAGIC.to_vec();
    v.push(FORMAT_V1);
    v.extend_from_slice(&f.instance);
    v.extend_from_slice(&f.blocks.to_be_bytes());
    let crc = crc32c::crc32c(&v);
    v.extend_from_slice(&crc.to_be_bytes());
    v
}

pub(crate) fn decode_superblock(b: &[u8]) -> Option<Format> {
    if b.len() < 45 || &b[..16] != SUPER_MAGIC || b[16] != FORMAT_V1 {
        return None;
    }
    let crc = u32::from_be_bytes(b[41..45].try_into().ok()?);
    if crc32c::crc32c(&b[..41]) != crc {
        return None;
    }
    Some(Format {
        instance: b[17..33].try_into().ok()?,
        blocks: u64::from_be_bytes(b[33..41].try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_entry_roundtrip_and_rejects_garbage() {
        let data = vec![5u8; 9000];
        let e = ChunkEntry::for_data(8192, &data, *blake3::hash(&data).as_bytes());
        assert_eq!(e.crcs.len(), 3);
        let enc = e.encode();
        assert_eq!(ChunkEntry::decode(&enc), Some(e.clone()));
        // Truncated, wrong version, misaligned offset, wrong crc count: all rejected.
        assert_eq!(ChunkEntry::decode(&enc[..enc.len() - 1]), None);
        let mut bad = enc.clone();
        bad[0] = 9;
        assert_eq!(ChunkEntry::decode(&bad), None);
        let mut bad = enc.clone();
        bad[8] = 1;
        assert_eq!(ChunkEntry::decode(&bad), None);
        assert_eq!(ChunkEntry::decode(&[]), None);
        let empty = ChunkEntry::for_data(0, &[], *blake3::hash(&[]).as_bytes());
        assert_eq!(ChunkEntry::decode(&empty.encode()), Some(empty));
    }

    #[test]
    fn record_roundtrip_and_rejects_garbage() {
        let tallied = Record {
            timestamp: 3,
            value: Some(b"row".to_vec()),
            tally: Some(Tally {
                group_len: 2,
                weight: u64::MAX,
            }),
        };
        for rec in [
            Record::tombstone(7),
            Record::live(u64::MAX, vec![]),
            Record::live(1, b"abc".to_vec()),
            tallied,
        ] {
            assert_eq!(decode_record(&encode_record(&rec)), Some(rec));
        }
        // A tombstone carries no tally.
        let mut tomb = Record::tombstone(9);
        tomb.tally = Some(Tally {
            group_len: 1,
            weight: 1,
        });
        assert_eq!(
            decode_record(&encode_record(&tomb)),
            Some(Record::tombstone(9))
        );
        // Tag 2 with its tally cut short.
        assert_eq!(
            decode_record(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]),
            None
        );
        assert_eq!(decode_record(&[1, 0, 0]), None);
        assert_eq!(decode_record(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 1]), None);
        assert_eq!(decode_record(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 7]), None);
        assert_eq!(decode_record(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), None);
    }

    #[test]
    fn tally_roundtrip_and_rejects_garbage() {
        let t = TallyTotals {
            count: 3,
            weight: 1 << 40,
            stamp: 99,
        };
        assert_eq!(decode_tally(&encode_tally(&t)), Some(t));
        assert_eq!(decode_tally(&encode_tally(&t)[..24]), None);
        let mut bad = encode_tally(&t);
        bad[0] = 9;
        assert_eq!(decode_tally(&bad), None);
    }

    #[test]
    fn superblock_roundtrip() {
        let f = Format {
            instance: [3; 16],
            blocks: 12345,
        };
        let mut sb = encode_superblock(&f);
        assert_eq!(decode_superblock(&sb), Some(f.clone()));
        assert_eq!(Format::decode(&f.encode()), Some(f));
        sb[20] ^= 1;
        assert_eq!(decode_superblock(&sb), None);
    }
}

const BLOCK_V1: u8 = 1;
const BLOCK_V2: u8 = 2;

/// Key of one volume block: volume id then block number, both big-endian, so a volume's
/// blocks are contiguous and in order.
pub(crate) fn block_key(volume: u64, block: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&volume.to_be_bytes());
    k[8..].copy_from_slice(&block.to_be_bytes());
    k
}

pub(crate) fn decode_block_key(k: &[u8]) -> Option<(u64, u64)> {
    let k: &[u8; 16] = k.try_into().ok()?;
    let volume = u64::from_be_bytes(k[..8].try_into().ok()?);
    let block = u64::from_be_bytes(k[8..].try_into().ok()?);
    Some((volume, block))
}

/// Where one 4 KiB volume block lives and its checksum.
///
/// An entry written by an unsynced round (see `commit`) also carries that round's generation
/// and the durable entry it replaced (`prev`, `None` for a hole). Once the disk's synced
/// generation (`META_SYNCED_GEN`) reaches `gen`, the entry is durable and `prev` means nothing;
/// until then, `prev`'s block is kept allocated, and opening the disk after an unclean stop
/// checks the entry's block against its checksum and falls back to `prev` if the data never
/// reached the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockEntry {
    /// Block number in the data area.
    pub addr: u64,
    pub crc: u32,
    /// 0: written by a synced round.
    pub gen: u64,
    pub prev: Option<(u64, u32)>,
}

impl BlockEntry {
    /// A durable entry.
    pub(crate) fn synced(addr: u64, crc: u32) -> Self {
        BlockEntry {
            addr,
            crc,
            gen: 0,
            prev: None,
        }
    }

    /// `V1 addr crc` (13 bytes) for a synced entry; `V2 addr crc gen [prev_addr prev_crc]`
    /// (21 or 33 bytes) for an unsynced one.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(33);
        v.push(if self.gen == 0 { BLOCK_V1 } else { BLOCK_V2 });
        v.extend_from_slice(&self.addr.to_be_bytes());
        v.extend_from_slice(&self.crc.to_be_bytes());
        if self.gen != 0 {
            v.extend_from_slice(&self.gen.to_be_bytes());
            if let Some((addr, crc)) = self.prev {
                v.extend_from_slice(&addr.to_be_bytes());
                v.extend_from_slice(&crc.to_be_bytes());
            }
        }
        v
    }

    pub(crate) fn decode(v: &[u8]) -> Option<Self> {
        let u64_at =
            |i: usize| -> Option<u64> { Some(u64::from_be_bytes(v[i..i + 8].try_into().ok()?)) };
        let u32_at =
            |i: usize| -> Option<u32> { Some(u32::from_be_bytes(v[i..i + 4].try_into().ok()?)) };
        match (v.first(), v.len()) {
            (Some(&BLOCK_V1), 13) => Some(BlockEntry::synced(u64_at(1)?, u32_at(9)?)),
            (Some(&BLOCK_V2), 21 | 33) => {
                let gen = u64_at(13)?;
                if gen == 0 {
                    return None;
                }
                Some(BlockEntry {
                    addr: u64_at(1)?,
                    crc: u32_at(9)?,
                    gen,
                    prev: if v.len() == 33 {
                        Some((u64_at(21)?, u32_at(29)?))
                    } else {
                        None
                    },
                })
            }
            _ => None,
        }
    }
}

/// The highest generation of unsynced block writes known durable (u64, big-endian).
pub(crate) const META_SYNCED_GEN: &[u8] = b"blocks-synced-gen";

pub(crate) fn synced_gen(db: &DB) -> Result<u64> {
    let meta = cf(db, CF_META)?;
    Ok(match db.get_cf(meta, META_SYNCED_GEN).map_err(index_err)? {
        Some(v) if v.len() == 8 => u64::from_be_bytes(v[..].try_into().unwrap_or_default()),
        _ => 0,
    })
}

#[cfg(test)]
mod block_tests {
    use super::*;

    #[test]
    fn block_entries_round_trip_and_refuse_garbage() {
        let e = BlockEntry::synced(77, 0xdead_beef);
        assert_eq!(e.encode().len(), 13);
        assert_eq!(BlockEntry::decode(&e.encode()), Some(e));
        for prev in [None, Some((5, 9))] {
            let u = BlockEntry {
                addr: 78,
                crc: 1,
                gen: 3,
                prev,
            };
            assert_eq!(BlockEntry::decode(&u.encode()), Some(u));
        }
        assert_eq!(BlockEntry::decode(&[2; 20]), None);
        assert_eq!(BlockEntry::decode(&[2; 13]), None);
        assert_eq!(BlockEntry::decode(&[1; 5]), None);
        assert_eq!(decode_block_key(&block_key(3, 9)), Some((3, 9)));
        assert!(block_key(1, u64::MAX) < block_key(2, 0));
    }
}
