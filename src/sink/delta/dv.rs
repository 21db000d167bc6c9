//! Deletion vectors (the Delta `deletionVectors` table feature): which rows of a data file are
//! deleted, as a 64-bit roaring bitmap of row positions, stored in a file beside the data.
//!
//! The file format is the protocol's "Deletion Vector Format" (what Spark and the Delta kernel
//! write and read): a version byte (1), then per vector its size (big-endian u32, of what
//! follows up to the checksum), the magic 1681511377 (little-endian), the bitmap in roaring's
//! portable 64-bit form, and a CRC-32 (big-endian) of the magic and the bitmap. A vector is
//! named in the log by a descriptor: storage type `u`, the file's UUID in Z85 (optionally after
//! a directory prefix), the vector's offset in the file, its size and its cardinality; the file
//! is `<prefix>/deletion_vector_<uuid>.bin` in the table's root.

use bytes::Bytes;
use deltalake::kernel::{DeletionVectorDescriptor, StorageType};
use deltalake::logstore::object_store::ObjectStoreExt;
use deltalake::{ObjectStore, Path};
use roaring::RoaringTreemap;

use crate::error::{Error, Result};

const VERSION: u8 = 1;
const MAGIC: u32 = 1_681_511_377;

/// One file of deletion vectors, being built.
pub(super) struct DvFile {
    uuid: uuid::Uuid,
    bytes: Vec<u8>,
}

impl DvFile {
    pub(super) fn new() -> DvFile {
        DvFile { uuid: uuid::Uuid::new_v4(), bytes: vec![VERSION] }
    }

    /// Appends `rows` as one vector; its descriptor.
    pub(super) fn push(&mut self, rows: &RoaringTreemap) -> Result<DeletionVectorDescriptor> {
        let mut body = Vec::with_capacity(rows.serialized_size() + 4);
        body.extend(MAGIC.to_le_bytes());
        rows.serialize_into(&mut body).map_err(|e| Error::Sink(format!("cannot serialize a deletion vector: {e}")))?;
        let (offset, size) = (self.bytes.len(), body.len());
        let too_big = || Error::Sink("a deletion vector file outgrew 2 GiB".into());
        let offset = i32::try_from(offset).map_err(|_| too_big())?;
        let size = i32::try_from(size).map_err(|_| too_big())?;
        self.bytes.extend((size as u32).to_be_bytes());
        self.bytes.extend(&body);
        self.bytes.extend(crc32fast::hash(&body).to_be_bytes());
        Ok(DeletionVectorDescriptor {
            storage_type: StorageType::UuidRelativePath,
            path_or_inline_dv: z85::encode(self.uuid.as_bytes()),
            offset: Some(offset),
            size_in_bytes: size,
            cardinality: rows.len() as i64,
        })
    }

    /// Writes the file to the table's store (rooted at the table).
    pub(super) async fn write(self, store: &dyn ObjectStore) -> Result<()> {
        let path = Path::from(format!("deletion_vector_{}.bin", self.uuid));
        store
            .put(&path, Bytes::from(self.bytes).into())
            .await
            .map(|_| ())
            .map_err(|e| Error::Sink(format!("cannot write the deletion vector file {path}: {e}")))
    }
}

/// The file a `u` descriptor names, relative to the table's root.
fn relative_path(d: &DeletionVectorDescriptor) -> Result<String> {
    let encoded = d.path_or_inline_dv.as_bytes();
    let bad = || Error::Sink(format!("deletion vector path {:?} is not a Z85 UUID", d.path_or_inline_dv));
    if encoded.len() < 20 {
        return Err(bad());
    }
    let (prefix, id) = encoded.split_at(encoded.len() - 20);
    let uuid = uuid::Uuid::from_slice(&z85::decode(id).map_err(|_| bad())?).map_err(|_| bad())?;
    let prefix = std::str::from_utf8(prefix).map_err(|_| bad())?;
    Ok(if prefix.is_empty() { format!("deletion_vector_{uuid}.bin") } else { format!("{prefix}/deletion_vector_{uuid}.bin") })
}

/// Reads the deletion vector `d` describes from the table's store (rooted at the table).
pub async fn read(store: &dyn ObjectStore, d: &DeletionVectorDescriptor) -> Result<RoaringTreemap> {
    let bytes: Vec<u8> = match d.storage_type {
        StorageType::Inline => {
            let raw = z85::decode(&d.path_or_inline_dv)
                .map_err(|_| Error::Sink(format!("inline deletion vector {:?} is not Z85", d.path_or_inline_dv)))?;
            return bitmap(&raw, "an inline deletion vector");
        }
        StorageType::UuidRelativePath | StorageType::AbsolutePath => {
            let path = match d.storage_type {
                StorageType::UuidRelativePath => relative_path(d)?,
                _ => d.path_or_inline_dv.clone(),
            };
            let offset = d.offset.unwrap_or(1).max(0) as u64;
            let end = offset + 4 + d.size_in_bytes.max(0) as u64 + 4;
            let object = Path::from(path.as_str());
            store
                .get_range(&object, offset..end)
                .await
                .map_err(|e| Error::Sink(format!("cannot read the deletion vector file {path}: {e}")))?
                .to_vec()
        }
    };
    let what = format!("deletion vector in {}", d.path_or_inline_dv);
    if bytes.len() < 8 {
        return Err(Error::Sink(format!("{what} is truncated")));
    }
    let size = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    let body = bytes.get(4..4 + size).ok_or_else(|| Error::Sink(format!("{what} is truncated")))?;
    let crc = bytes.get(4 + size..8 + size).ok_or_else(|| Error::Sink(format!("{what} has no checksum")))?;
    if crc32fast::hash(body).to_be_bytes() != crc {
        return Err(Error::Sink(format!("{what} fails its checksum")));
    }
    bitmap(body, &what)
}

/// A bitmap from its magic and portable serialization.
fn bitmap(body: &[u8], what: &str) -> Result<RoaringTreemap> {
    if body.len() < 4 || u32::from_le_bytes(body[..4].try_into().expect("4 bytes")) != MAGIC {
        return Err(Error::Sink(format!("{what} is not in the roaring bitmap array format")));
    }
    RoaringTreemap::deserialize_from(&body[4..]).map_err(|e| Error::Sink(format!("{what} does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn vectors_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = deltalake::logstore::object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let mut file = DvFile::new();
        let a: RoaringTreemap = [0u64, 5, 10].into_iter().collect();
        let b: RoaringTreemap = (0u64..100_000).step_by(3).chain([u32::MAX as u64 + 7]).collect();
        let (da, db) = (file.push(&a).unwrap(), file.push(&b).unwrap());
        assert_eq!((da.offset, da.cardinality), (Some(1), 3));
        file.write(&store).await.unwrap();
        assert_eq!(read(&store, &da).await.unwrap(), a);
        assert_eq!(read(&store, &db).await.unwrap(), b);
    }
}
