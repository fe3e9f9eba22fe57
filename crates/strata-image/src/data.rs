//! Image bytes. An upload streams into a hidden, unexported volume (`image-<id>`), 4 MiB at
//! a time through the volume's write cache, hashing MD5 and SHA-512 on the way and leaving
//! all-zero pieces as holes; once flushed (durable on every in-sync replica), one meta
//! transaction turns that volume into the snapshot record of the same name and makes the
//! image `active`. A download reads the frozen chain back, cut to the exact size.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use md5::Digest;
use std::sync::Arc;
use strata_data::DataPlane;
use strata_meta::{Check, MetaStore, Op};
use strata_nbd::BlockTarget;
use strata_volume::records as block;
use strata_volume::{InSync, SnapshotSpec, Volume, EXTENT_BYTES};

use crate::{data_name, drop_hidden, encode, get, now, ImageError, ImageRecord, IMAGES, SIZE_CAP};

const BLOCK: u64 = strata_disk::BLOCK_BYTES as u64;
/// The hidden volume's first size when the client names none, and the most it starts at
/// whatever the client says; it grows as the body does. (A failed upload's layer is freed
/// across the volume's size, so a size no data backs costs the collector work.)
const FIRST_SIZE: u64 = 1 << 30;
const FIRST_SIZE_MAX: u64 = 4 << 30;
/// 4 MiB reads a download keeps in flight ahead of the client.
const READ_AHEAD: usize = 4;

/// Where image bytes live: the block layers of the cluster.
#[derive(Clone)]
pub struct ImageData {
    pub meta: Arc<dyn MetaStore>,
    pub data: Arc<DataPlane>,
    pub insync: InSync,
    /// Where conversions keep their scratch files.
    pub scratch: std::path::PathBuf,
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

fn unchanged(key: &str, raw: Vec<u8>) -> Check {
    Check::Equals {
        table: IMAGES.into(),
        key: key.into(),
        value: raw,
    }
}

fn put(rec: &ImageRecord) -> Op {
    Op::Put {
        table: IMAGES.into(),
        key: rec.id.clone(),
        value: encode(rec),
    }
}

/// What an upload computed.
struct Written {
    size: u64,
    md5: String,
    sha512: String,
}

impl ImageData {
    /// Store `body` as the bytes of image `id`, which must be `queued`: it is `saving`
    /// meanwhile, and `active` with its size and hashes when this returns Ok. On any
    /// failure the partial data is dropped and the image is `queued` again. `size_hint`
    /// (the request's length) sizes the hidden volume up front.
    pub async fn upload<S, E>(
        &self,
        id: &str,
        body: S,
        size_hint: Option<u64>,
    ) -> Result<ImageRecord, ImageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let meta = self.meta.as_ref();
        let (rec, raw) = get(meta, id)
            .await?
            .ok_or_else(|| ImageError::NotFound(format!("No image found with ID {id}")))?;
        if rec.status != "queued" {
            return Err(ImageError::Conflict(format!(
                "Image status transition from {} to saving is not allowed",
                rec.status
            )));
        }
        if let Some(hint) = size_hint.filter(|&h| h > SIZE_CAP) {
            return Err(ImageError::TooLarge(format!(
                "Image exceeds the storage quota: {hint} bytes is more than the {SIZE_CAP} allowed"
            )));
        }
        let mut saving = rec.clone();
        saving.status = "saving".into();
        saving.updated_at = now();
        let out = meta
            .write(strata_meta::Txn {
                checks: vec![unchanged(id, raw)],
                ops: vec![put(&saving)],
            })
            .await?;
        if !out.succeeded {
            return Err(ImageError::Conflict(format!(
                "image {id} changed while its upload started"
            )));
        }
        let saving_raw = encode(&saving);
        let result = self
            .write_and_freeze(&saving, saving_raw.clone(), body, size_hint)
            .await;
        match result {
            Ok(active) => {
                tracing::info!(image = id, size = active.size, "image data stored");
                Ok(active)
            }
            Err(e) => {
                tracing::warn!(image = id, error = %e, "image upload failed; data dropped");
                if let Err(e) = drop_hidden(meta, id).await {
                    tracing::error!(image = id, error = %e, "cannot drop a failed upload's volume")
                }
                let mut queued = saving.clone();
                queued.status = "queued".into();
                queued.updated_at = now();
                if let Err(e) = meta
                    .write(strata_meta::Txn {
                        checks: vec![unchanged(id, saving_raw)],
                        ops: vec![put(&queued)],
                    })
                    .await
                {
                    tracing::error!(image = id, error = %e, "cannot return an image to queued");
                }
                Err(e)
            }
        }
    }

    async fn write_and_freeze<S, E>(
        &self,
        saving: &ImageRecord,
        saving_raw: Vec<u8>,
        body: S,
        size_hint: Option<u64>,
    ) -> Result<ImageRecord, ImageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let meta = self.meta.as_ref();
        let hidden = data_name(&saving.id);
        // A crash during an earlier upload may have left the hidden volume behind.
        drop_hidden(meta, &saving.id).await?;
        let first =
            round_up(size_hint.unwrap_or(FIRST_SIZE).max(1), EXTENT_BYTES).min(FIRST_SIZE_MAX);
        let spec = block::create_with(
            meta,
            block::new_volume(&hidden, first, false),
            vec![],
            vec![],
        )
        .await?;
        let vol = Volume::new(spec, self.data.clone(), self.insync.clone());
        let written = self.write_body(&vol, &hidden, body).await?;
        vol.flush()
            .await
            .map_err(|e| ImageError::Storage(e.to_string()))?;
        drop(vol);

        let mut active = saving.clone();
        active.status = "active".into();
        active.size = Some(written.size);
        active.virtual_size = None;
        active.checksum = Some(written.md5);
        active.os_hash_algo = Some("sha512".into());
        active.os_hash_value = Some(written.sha512);
        active.updated_at = now();
        let checks = vec![unchanged(&saving.id, saving_raw)];
        if written.size == 0 {
            active.data = None;
            block::delete_with(meta, &hidden, checks, vec![put(&active)]).await?;
        } else {
            active.data = Some(hidden.clone());
            block::freeze_with(
                meta,
                &hidden,
                &hidden,
                round_up(written.size, BLOCK),
                checks,
                vec![put(&active)],
            )
            .await
            .map_err(|e| match e {
                strata_volume::VolumeError::Conflict(_) => ImageError::Conflict(format!(
                    "image {} was changed or deleted during its upload",
                    saving.id
                )),
                e => e.into(),
            })?;
        }
        Ok(active)
    }

    async fn write_body<S, E>(
        &self,
        vol: &Arc<Volume>,
        hidden: &str,
        mut body: S,
    ) -> Result<Written, ImageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let piece = EXTENT_BYTES as usize;
        let mut md5 = md5::Md5::new();
        let mut sha = sha2::Sha512::new();
        let mut buf = BytesMut::with_capacity(piece);
        let mut total = 0u64;
        let mut offset = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ImageError::Body(e.to_string()))?;
            total += chunk.len() as u64;
            if total > SIZE_CAP {
                return Err(ImageError::TooLarge(format!(
                    "Image exceeds the storage quota: more than {SIZE_CAP} bytes"
                )));
            }
            md5.update(&chunk);
            sha.update(&chunk);
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let take = rest.len().min(piece - buf.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buf.len() == piece {
                    let full = buf.split().freeze();
                    self.write_piece(vol, hidden, offset, full).await?;
                    offset += piece as u64;
                    buf.reserve(piece);
                }
            }
        }
        if !buf.is_empty() {
            let len = round_up(buf.len() as u64, BLOCK) as usize;
            buf.resize(len, 0);
            self.write_piece(vol, hidden, offset, buf.freeze()).await?;
        }
        Ok(Written {
            size: total,
            md5: hex::encode(md5.finalize()),
            sha512: hex::encode(sha.finalize()),
        })
    }

    /// Write one piece, leaving it a hole when it is all zeroes and growing the hidden
    /// volume first when the piece runs past it.
    async fn write_piece(
        &self,
        vol: &Arc<Volume>,
        hidden: &str,
        offset: u64,
        piece: Bytes,
    ) -> Result<(), ImageError> {
        if piece.iter().all(|&b| b == 0) {
            return Ok(());
        }
        // An image deleted during its upload took the hidden volume with it, and its layer
        // is on its way to the collector: writing on would leave blocks nothing frees.
        if block::get_local(self.meta.as_ref(), hidden)?.is_none() {
            return Err(ImageError::Conflict(format!(
                "volume {hidden} is gone: the image was deleted during its upload"
            )));
        }
        let end = offset + piece.len() as u64;
        if end > vol.size_bytes() {
            let grown = round_up(end.max(vol.size_bytes() * 2), EXTENT_BYTES).min(SIZE_CAP);
            let spec = block::extend(self.meta.as_ref(), hidden, grown).await?;
            vol.update(spec).await;
        }
        vol.write(offset, piece, false)
            .await
            .map_err(|e| ImageError::Storage(e.to_string()))
    }

    /// The bytes `[start, end)` of an image whose data is `snap` (`size` bytes long), read
    /// 4 MiB at a time with a few reads in flight.
    pub fn read(
        &self,
        snap: &SnapshotSpec,
        size: u64,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = Result<Bytes, ImageError>> + Send + 'static {
        let vol = Volume::new(snap.frozen(), self.data.clone(), self.insync.clone());
        let end = end.min(size);
        let first = start - start % EXTENT_BYTES;
        let windows: Vec<u64> = (first..end).step_by(EXTENT_BYTES as usize).collect();
        futures::stream::iter(windows)
            .map(move |w| {
                let vol = vol.clone();
                async move {
                    let hi = round_up((w + EXTENT_BYTES).min(end), BLOCK);
                    let bytes = vol
                        .read(w, (hi - w) as usize)
                        .await
                        .map_err(|e| ImageError::Storage(e.to_string()))?;
                    let from = (start.max(w) - w) as usize;
                    let to = ((w + EXTENT_BYTES).min(end) - w) as usize;
                    Ok(bytes.slice(from..to))
                }
            })
            .buffered(READ_AHEAD)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};
    use strata_data::{DataConfig, Topology};
    use strata_disk::{Disk, DiskConfig};
    use strata_meta::MemMeta;
    use strata_placement::{Device, Ring, RingSpec};

    pub(crate) fn store(dir: &std::path::Path) -> ImageData {
        let disk = Disk::open(DiskConfig {
            dir: dir.join("disk0"),
            device: None,
            capacity_bytes: 256 << 20,
            force_syscall_io: false,
            read_cache_bytes: strata_disk::READ_CACHE_BYTES_DEFAULT,
            straighten_idle_ms: strata_disk::STRAIGHTEN_IDLE_MS_DEFAULT,
        })
        .expect("disk opens");
        let data = DataPlane::new(
            DataConfig {
                node_id: 1,
                write_quorum: 1,
                rpc_timeout_ms: 1000,
                hint_interval_ms: 1000,
            },
            BTreeMap::from([(1000, disk)]),
        );
        let ring = Ring::new(RingSpec {
            version: 1,
            part_power: 4,
            replicas: 1,
            devices: vec![Device {
                id: 1000,
                node: 1,
                zone: "z".into(),
                weight: 1.0,
            }],
        })
        .expect("ring");
        data.set_topology(Topology {
            ring: Arc::new(ring),
            addrs: HashMap::new(),
        });
        let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::new());
        ImageData {
            insync: InSync::new(meta.clone()),
            meta,
            data,
            scratch: dir.join("scratch"),
        }
    }

    pub(crate) async fn queued_as(store: &ImageData, id: &str, disk_format: &str) {
        queued(store, id).await;
        let (mut rec, _) = get(store.meta.as_ref(), id).await.unwrap().unwrap();
        rec.disk_format = Some(disk_format.into());
        store
            .meta
            .write(strata_meta::Txn {
                checks: vec![],
                ops: vec![put(&rec)],
            })
            .await
            .unwrap();
    }

    async fn queued(store: &ImageData, id: &str) {
        let mut rec = ImageRecord::queued(id, "p");
        rec.name = Some(id.into());
        rec.visibility = "private".into();
        rec.disk_format = Some("raw".into());
        rec.container_format = Some("bare".into());
        store
            .meta
            .write(strata_meta::Txn {
                checks: vec![],
                ops: vec![put(&rec)],
            })
            .await
            .unwrap();
    }

    pub(crate) fn body(parts: Vec<Vec<u8>>) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from(p))))
    }

    async fn read_all(store: &ImageData, rec: &ImageRecord, start: u64, end: u64) -> Vec<u8> {
        let snap = block::get_snapshot(store.meta.as_ref(), rec.data.as_deref().unwrap())
            .await
            .unwrap()
            .unwrap();
        let mut s = Box::pin(store.read(&snap, rec.size.unwrap(), start, end));
        let mut out = Vec::new();
        while let Some(p) = s.next().await {
            out.extend_from_slice(&p.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn upload_freezes_exact_bytes_and_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        queued(&store, "a").await;
        // Odd piece sizes, a zero run that stays a hole, and a tail that is not a
        // multiple of 4 KiB; the hint is too small, so the hidden volume must grow.
        let mut bytes: Vec<u8> = (0..9_000_003u32)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        bytes[4 << 20..8 << 20].fill(0);
        let parts: Vec<Vec<u8>> = bytes.chunks(65_521).map(|c| c.to_vec()).collect();
        let rec = store
            .upload("a", body(parts), Some(4096))
            .await
            .expect("upload");
        assert_eq!(rec.status, "active");
        assert_eq!(rec.size, Some(bytes.len() as u64));
        assert_eq!(
            rec.checksum.as_deref(),
            Some(hex::encode(md5::Md5::digest(&bytes)).as_str())
        );
        assert_eq!(
            rec.os_hash_value.as_deref(),
            Some(hex::encode(sha2::Sha512::digest(&bytes)).as_str())
        );
        let stored = get(store.meta.as_ref(), "a").await.unwrap().unwrap().0;
        assert_eq!(stored, rec);
        assert_eq!(
            block::get(store.meta.as_ref(), &data_name("a"))
                .await
                .unwrap(),
            None,
            "the hidden volume became the snapshot"
        );
        let n = bytes.len() as u64;
        assert!(read_all(&store, &rec, 0, n).await == bytes);
        assert!(read_all(&store, &rec, 4_194_000, 8_400_001).await == bytes[4_194_000..8_400_001]);
        assert!(read_all(&store, &rec, n - 5, n).await == bytes[bytes.len() - 5..]);

        // A second upload is refused: the image is active.
        assert!(matches!(
            store.upload("a", body(vec![vec![1]]), None).await,
            Err(ImageError::Conflict(_))
        ));
    }

    #[tokio::test]
    async fn a_broken_body_leaves_the_image_queued_and_no_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        queued(&store, "b").await;
        let parts = futures::stream::iter(vec![
            Ok(Bytes::from(vec![5u8; 5 << 20])),
            Err("connection reset".to_string()),
        ]);
        let err = store.upload("b", parts, None).await.unwrap_err();
        assert!(matches!(err, ImageError::Body(_)), "{err}");
        let rec = get(store.meta.as_ref(), "b").await.unwrap().unwrap().0;
        assert_eq!((rec.status.as_str(), rec.data.as_deref()), ("queued", None));
        assert_eq!(
            block::get(store.meta.as_ref(), &data_name("b"))
                .await
                .unwrap(),
            None
        );
        // The queued layer waits for the collector.
        assert!(!block::garbage(store.meta.as_ref())
            .await
            .unwrap()
            .is_empty());

        // Empty bodies make an active image of zero bytes, with no data record.
        let rec = store.upload("b", body(vec![]), Some(0)).await.unwrap();
        assert_eq!((rec.size, rec.data.as_deref()), (Some(0), None));
        assert_eq!(
            rec.checksum.as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
    }

    #[tokio::test]
    async fn an_image_deleted_during_its_upload_stops_the_upload() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        queued(&store, "d").await;
        let meta = store.meta.clone();
        // The body deletes the image (record and hidden volume, as `crate::delete` does)
        // after its first 4 MiB.
        let body = futures::stream::unfold(0u32, move |n| {
            let meta = meta.clone();
            async move {
                if n == 1 {
                    let (rec, raw) = get(meta.as_ref(), "d").await.unwrap().unwrap();
                    crate::delete(meta.as_ref(), &rec, raw).await.unwrap();
                }
                (n < 4).then(|| (Ok::<_, String>(Bytes::from(vec![9u8; 4 << 20])), n + 1))
            }
        });
        let err = store.upload("d", Box::pin(body), None).await.unwrap_err();
        assert!(matches!(err, ImageError::Conflict(_)), "{err}");
        assert!(get(store.meta.as_ref(), "d").await.unwrap().is_none());
        assert_eq!(
            block::get(store.meta.as_ref(), &data_name("d"))
                .await
                .unwrap(),
            None
        );
    }
}
