//! Writing an image that is not raw (qcow2, vmdk, vdi, vhd, vhdx) into a volume, as Cinder
//! does: the bytes go to a scratch file, `qemu-img` checks and converts them to a sparse raw
//! file, and that file is written into the volume (all-zero pieces left as holes) and
//! flushed. Images are untrusted input: `qemu-img` runs under CPU and memory limits, with
//! the format named (never probed), and an image that names a backing file or an external
//! data file is refused, so a crafted image cannot make the node read its own files.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use strata_nbd::BlockTarget;
use strata_volume::{SnapshotSpec, Volume, EXTENT_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::data::ImageData;
use crate::{ImageError, ImageRecord};

const BLOCK: usize = strata_disk::BLOCK_BYTES;
/// `qemu-img info` limits, as Cinder sets them (`prlimit`).
const INFO_CPU_SECONDS: u64 = 30;
const INFO_MEMORY_BYTES: u64 = 1 << 30;
/// How long a conversion may take before it is given up.
const CONVERT_TIMEOUT: Duration = Duration::from_secs(3600);

/// The `qemu-img` format of a Glance disk format that needs converting; None for formats
/// whose bytes are the disk (`raw`, `iso`, `ami`...) and for those not supported.
pub fn qemu_format(disk_format: &str) -> Option<&'static str> {
    match disk_format {
        "qcow2" => Some("qcow2"),
        "vmdk" => Some("vmdk"),
        "vdi" => Some("vdi"),
        "vhd" => Some("vpc"),
        "vhdx" => Some("vhdx"),
        _ => None,
    }
}

/// What `qemu-img info` says of an image file, once it is judged safe to convert.
#[derive(Debug, PartialEq, Eq)]
pub struct Checked {
    pub virtual_size: u64,
}

/// Judge `qemu-img info --output=json` of an untrusted image.
pub fn judge_info(info: &Value, wanted: &str) -> Result<Checked, ImageError> {
    let format = info["format"].as_str().unwrap_or("");
    if format != wanted {
        return Err(ImageError::Invalid(format!(
            "the image is {format:?}, not the {wanted:?} its disk_format says"
        )));
    }
    if info.get("backing-filename").is_some() || info.get("full-backing-filename").is_some() {
        return Err(ImageError::Invalid(
            "the image names a backing file; refused".into(),
        ));
    }
    if info["format-specific"]["data"]
        .get("data-file")
        .is_some_and(|v| !v.is_null())
    {
        return Err(ImageError::Invalid(
            "the image names an external data file; refused".into(),
        ));
    }
    let virtual_size = info["virtual-size"]
        .as_u64()
        .ok_or_else(|| ImageError::Invalid("qemu-img reports no virtual size".into()))?;
    Ok(Checked { virtual_size })
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove a conversion's scratch");
        }
    }
}

async fn qemu_img(args: &[&str], limits: bool, timeout: Duration) -> Result<Vec<u8>, ImageError> {
    let mut cmd = if limits {
        let mut c = tokio::process::Command::new("prlimit");
        c.arg(format!("--cpu={INFO_CPU_SECONDS}"))
            .arg(format!("--as={INFO_MEMORY_BYTES}"))
            .arg("--")
            .arg("qemu-img");
        c
    } else {
        tokio::process::Command::new("qemu-img")
    };
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| ImageError::Storage(format!("qemu-img {} timed out", args[0])))?
        .map_err(|e| ImageError::Storage(format!("cannot run qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(ImageError::Invalid(format!(
            "qemu-img {} failed: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

impl ImageData {
    /// Convert image `img` (bytes in `snap`) to raw and write it into `target`, which must
    /// be at least its virtual size. Returns the virtual size.
    pub async fn convert_into(
        &self,
        img: &ImageRecord,
        snap: &SnapshotSpec,
        target: &Arc<Volume>,
    ) -> Result<u64, ImageError> {
        let disk_format = img.disk_format.as_deref().unwrap_or("raw");
        let format = qemu_format(disk_format).ok_or_else(|| {
            ImageError::Invalid(format!("images in {disk_format} cannot be converted"))
        })?;
        let dir = self
            .scratch
            .join(format!("convert-{}-{:016x}", img.id, rand::random::<u64>()));
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| ImageError::Storage(format!("creating {}: {e}", dir.display())))?;
        let scratch = Scratch(dir);
        let src = scratch.0.join("image");
        let raw = scratch.0.join("disk.raw");
        self.save(snap, img.size.unwrap_or(0), &src).await?;

        let src_s = src.to_string_lossy().into_owned();
        let info = qemu_img(
            &["info", "--output=json", "-f", format, &src_s],
            true,
            Duration::from_secs(2 * INFO_CPU_SECONDS),
        )
        .await?;
        let info: Value = serde_json::from_slice(&info)
            .map_err(|e| ImageError::Invalid(format!("qemu-img info: {e}")))?;
        let checked = judge_info(&info, format)?;
        if checked.virtual_size > target.size_bytes() {
            return Err(ImageError::Invalid(format!(
                "the image's virtual size ({} bytes) is larger than the volume ({} bytes)",
                checked.virtual_size,
                target.size_bytes()
            )));
        }
        let raw_s = raw.to_string_lossy().into_owned();
        qemu_img(
            &[
                "convert", "-f", format, "-O", "raw", "-S", "4k", &src_s, &raw_s,
            ],
            false,
            CONVERT_TIMEOUT,
        )
        .await?;
        tokio::fs::remove_file(&src).await.ok();
        write_file(&raw, target).await?;
        target
            .flush()
            .await
            .map_err(|e| ImageError::Storage(e.to_string()))?;
        Ok(checked.virtual_size)
    }

    /// The whole of an image's bytes into a file.
    async fn save(&self, snap: &SnapshotSpec, size: u64, path: &Path) -> Result<(), ImageError> {
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| ImageError::Storage(format!("creating {}: {e}", path.display())))?;
        let mut bytes = Box::pin(self.read(snap, size, 0, size));
        while let Some(piece) = bytes.next().await {
            file.write_all(&piece?)
                .await
                .map_err(|e| ImageError::Storage(format!("writing {}: {e}", path.display())))?;
        }
        file.flush()
            .await
            .map_err(|e| ImageError::Storage(format!("writing {}: {e}", path.display())))
    }
}

/// Write a raw file into a volume from its start, 4 MiB at a time, leaving all-zero pieces
/// as holes.
async fn write_file(path: &Path, target: &Arc<Volume>) -> Result<(), ImageError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| ImageError::Storage(format!("opening {}: {e}", path.display())))?;
    let piece = EXTENT_BYTES as usize;
    let mut offset = 0u64;
    loop {
        let mut buf = BytesMut::zeroed(piece);
        let mut filled = 0;
        while filled < piece {
            let n = file
                .read(&mut buf[filled..])
                .await
                .map_err(|e| ImageError::Storage(format!("reading {}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(());
        }
        buf.truncate(filled.div_ceil(BLOCK) * BLOCK);
        let bytes: Bytes = buf.freeze();
        if bytes.iter().any(|&b| b != 0) {
            if offset + bytes.len() as u64 > target.size_bytes() {
                return Err(ImageError::Invalid(
                    "the converted image is larger than the volume".into(),
                ));
            }
            target
                .write(offset, bytes, false)
                .await
                .map_err(|e| ImageError::Storage(e.to_string()))?;
        }
        if filled < piece {
            return Ok(());
        }
        offset += piece as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats_map_to_qemu_names() {
        assert_eq!(qemu_format("vhd"), Some("vpc"));
        assert_eq!(qemu_format("qcow2"), Some("qcow2"));
        assert_eq!(qemu_format("raw"), None);
        assert_eq!(qemu_format("ploop"), None);
    }

    #[test]
    fn unsafe_or_mislabelled_images_are_refused() {
        let ok = json!({"format": "qcow2", "virtual-size": 1048576,
                        "format-specific": {"type": "qcow2", "data": {"compat": "1.1"}}});
        assert_eq!(
            judge_info(&ok, "qcow2").unwrap(),
            Checked {
                virtual_size: 1048576
            }
        );
        assert!(judge_info(&ok, "vmdk").is_err());
        let mut backing = ok.clone();
        backing["backing-filename"] = json!("/etc/shadow");
        assert!(judge_info(&backing, "qcow2").is_err());
        let mut data_file = ok.clone();
        data_file["format-specific"]["data"]["data-file"] = json!("/dev/vda");
        assert!(judge_info(&data_file, "qcow2").is_err());
        assert!(judge_info(&json!({"format": "qcow2"}), "qcow2").is_err());
    }

    #[tokio::test]
    async fn a_qcow2_image_converts_into_a_volume() {
        if std::process::Command::new("qemu-img")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("qemu-img is not installed; skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = crate::data::tests::store(dir.path());
        // A 16 MiB disk with data at two places, as qcow2 (what cloud images ship as).
        let raw = dir.path().join("src.raw");
        let mut disk = vec![0u8; 16 << 20];
        disk[..5000].fill(0x5a);
        disk[(9 << 20) + 7..(9 << 20) + 70_007].fill(0xc3);
        std::fs::write(&raw, &disk).unwrap();
        let qcow = dir.path().join("src.qcow2");
        let ok = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow)
            .status()
            .unwrap();
        assert!(ok.success());
        crate::data::tests::queued_as(&store, "q", "qcow2").await;
        let img = store
            .upload(
                "q",
                crate::data::tests::body(vec![std::fs::read(&qcow).unwrap()]),
                None,
            )
            .await
            .unwrap();
        let snap = strata_volume::records::get_snapshot(store.meta.as_ref(), "image-q")
            .await
            .unwrap()
            .unwrap();

        // Too small a volume is refused before anything is written.
        let small = strata_volume::records::create(store.meta.as_ref(), "small", 8 << 20)
            .await
            .unwrap();
        let small = Volume::new(small, store.data.clone(), store.insync.clone());
        let err = store.convert_into(&img, &snap, &small).await.unwrap_err();
        assert!(matches!(err, ImageError::Invalid(_)), "{err}");

        let spec = strata_volume::records::create(store.meta.as_ref(), "v", 32 << 20)
            .await
            .unwrap();
        let vol = Volume::new(spec, store.data.clone(), store.insync.clone());
        assert_eq!(
            store.convert_into(&img, &snap, &vol).await.unwrap(),
            16 << 20
        );
        let back = vol.read(0, 32 << 20).await.unwrap();
        assert!(back[..16 << 20] == disk[..]);
        assert!(back[16 << 20..].iter().all(|&b| b == 0));
        // The scratch files are gone.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("scratch"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");

        // A file that is not the qcow2 it claims to be is refused.
        crate::data::tests::queued_as(&store, "fake", "qcow2").await;
        let fake = store
            .upload(
                "fake",
                crate::data::tests::body(vec![vec![7u8; 8192]]),
                None,
            )
            .await
            .unwrap();
        let snap = strata_volume::records::get_snapshot(store.meta.as_ref(), "image-fake")
            .await
            .unwrap()
            .unwrap();
        let err = store.convert_into(&fake, &snap, &vol).await.unwrap_err();
        assert!(matches!(err, ImageError::Invalid(_)), "{err}");
    }
}
