//! Which object store offloaded segments go to, how to build it, and the key
//! of each segment's object.

use super::object::DEFAULT_INDEX_INTERVAL_BYTES;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// S3 refuses multipart parts below 5 MiB (except the last one).
pub const S3_MIN_PART_BYTES: usize = 5 << 20;

/// The kinds of object store segments can be offloaded to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectStoreKind {
    /// A directory on the local filesystem (single-machine and dev clusters).
    #[default]
    Local,
    /// Amazon S3 or an S3-compatible service (MinIO, Ceph RGW, R2, …).
    S3,
}

/// Where offloaded segments are stored and how they are uploaded.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// `"local"` (the default) or `"s3"`.
    pub kind: ObjectStoreKind,
    /// Directory of the local store, created if missing. Empty means the
    /// caller picks one (such as `<data-dir>/objects`) before building.
    pub local_path: PathBuf,
    /// S3 bucket name (required for `"s3"`).
    pub bucket: String,
    /// S3 region of the bucket.
    pub region: String,
    /// Endpoint URL of an S3-compatible service; AWS's endpoint when absent.
    pub endpoint: Option<String>,
    /// S3 access key id; when absent with the secret, credentials come from
    /// the usual AWS environment variables (and instance or pod roles).
    pub access_key_id: Option<String>,
    /// S3 secret access key, given together with `access_key_id`.
    pub secret_access_key: Option<String>,
    /// Whether plain `http://` endpoints are allowed (local MinIO and tests).
    pub allow_http: bool,
    /// Whether requests name the bucket in the host (`bucket.host/key`)
    /// rather than in the path (`host/bucket/key`, the default, which most
    /// S3-compatible services expect).
    pub virtual_hosted_style: bool,
    /// Size of each part of a multipart upload; segment objects smaller than
    /// one part are written with a single PUT. At least 5 MiB for S3.
    pub multipart_part_bytes: usize,
    /// Parts of one multipart upload sent at once (at least 1).
    pub upload_concurrency: usize,
    /// Upload bandwidth of the whole gateway in bytes per second, shared by
    /// all uploads; 0 means unlimited.
    pub upload_bytes_per_sec: u64,
    /// Distance in bytes between entries of a segment object's index: smaller
    /// makes reads skip less, larger makes footers smaller.
    pub index_interval_bytes: u64,
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        Self {
            kind: ObjectStoreKind::Local,
            local_path: PathBuf::new(),
            bucket: String::new(),
            region: "us-east-1".to_string(),
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            virtual_hosted_style: false,
            multipart_part_bytes: 8 << 20,
            upload_concurrency: 4,
            upload_bytes_per_sec: 0,
            index_interval_bytes: DEFAULT_INDEX_INTERVAL_BYTES,
        }
    }
}

// Written by hand so that the secret key never reaches a log.
impl std::fmt::Debug for ObjectStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreConfig")
            .field("kind", &self.kind)
            .field("local_path", &self.local_path)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("multipart_part_bytes", &self.multipart_part_bytes)
            .field("upload_concurrency", &self.upload_concurrency)
            .field("upload_bytes_per_sec", &self.upload_bytes_per_sec)
            .field("index_interval_bytes", &self.index_interval_bytes)
            .finish()
    }
}

/// Why an object store could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `kind = "local"` without a directory.
    #[error("object_store.local_path must be set for a local object store")]
    NoLocalPath,
    /// The local store's directory could not be created.
    #[error("cannot create the object store directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why it could not be created.
        source: std::io::Error,
    },
    /// `kind = "s3"` without a bucket.
    #[error("object_store.bucket must be set for an S3 object store")]
    NoBucket,
    /// Only one of the access key id and the secret was given.
    #[error(
        "object_store.access_key_id and object_store.secret_access_key must be given together"
    )]
    PartialCredentials,
    /// The upload settings cannot work.
    #[error("invalid object store upload settings: {0}")]
    InvalidUpload(String),
    /// The object store client refused its settings.
    #[error("cannot build the object store: {0}")]
    Build(#[from] object_store::Error),
}

/// Builds the object store `config` describes, creating the local directory
/// if needed.
pub fn build(config: &ObjectStoreConfig) -> Result<Arc<dyn ObjectStore>, StoreError> {
    check_upload(config)?;
    match config.kind {
        ObjectStoreKind::Local => build_local(config),
        ObjectStoreKind::S3 => build_s3(config),
    }
}

fn check_upload(config: &ObjectStoreConfig) -> Result<(), StoreError> {
    if config.upload_concurrency == 0 {
        return Err(StoreError::InvalidUpload(
            "upload_concurrency must be at least 1".into(),
        ));
    }
    let min_part = match config.kind {
        ObjectStoreKind::Local => 1,
        ObjectStoreKind::S3 => S3_MIN_PART_BYTES,
    };
    if config.multipart_part_bytes < min_part {
        return Err(StoreError::InvalidUpload(format!(
            "multipart_part_bytes must be at least {min_part}, not {}",
            config.multipart_part_bytes
        )));
    }
    if config.index_interval_bytes == 0 {
        return Err(StoreError::InvalidUpload(
            "index_interval_bytes must be at least 1".into(),
        ));
    }
    Ok(())
}

fn build_local(config: &ObjectStoreConfig) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let path = &config.local_path;
    if path.as_os_str().is_empty() {
        return Err(StoreError::NoLocalPath);
    }
    std::fs::create_dir_all(path).map_err(|source| StoreError::CreateDir {
        path: path.clone(),
        source,
    })?;
    // Bookies drop their copy of a segment once its object is stored, so
    // the object must be on disk, not in the page cache, when a put returns.
    let store = LocalFileSystem::new_with_prefix(path)?.with_fsync(true);
    Ok(Arc::new(store))
}

fn build_s3(config: &ObjectStoreConfig) -> Result<Arc<dyn ObjectStore>, StoreError> {
    if config.bucket.is_empty() {
        return Err(StoreError::NoBucket);
    }
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&config.bucket)
        .with_region(&config.region)
        .with_allow_http(config.allow_http)
        .with_virtual_hosted_style_request(config.virtual_hosted_style);
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    match (&config.access_key_id, &config.secret_access_key) {
        (Some(id), Some(secret)) => {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        (None, None) => {}
        _ => return Err(StoreError::PartialCredentials),
    }
    Ok(Arc::new(builder.build()?))
}

/// The key of a segment's object:
/// `topics/{topic_id}/{partition}/{base_offset:020}-{segment_id}.seg`, so that
/// a partition's objects list in offset order.
pub fn segment_object_key(
    topic_id: &str,
    partition: u32,
    base_offset: i64,
    segment_id: u64,
) -> String {
    format!("topics/{topic_id}/{partition}/{base_offset:020}-{segment_id}.seg")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use object_store::path::Path;
    use object_store::ObjectStoreExt;

    #[test]
    fn keys_sort_in_offset_order() {
        let key = segment_object_key("6f1c", 3, 42, 7);
        assert_eq!(key, "topics/6f1c/3/00000000000000000042-7.seg");
        assert!(segment_object_key("t", 0, 999, 1) < segment_object_key("t", 0, 1000, 2));
        assert_eq!(Path::parse(&key).unwrap().as_ref(), key);
    }

    #[tokio::test]
    async fn a_local_store_creates_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let config = ObjectStoreConfig {
            local_path: dir.path().join("data/objects"),
            ..Default::default()
        };
        let store = build(&config).unwrap();
        let key = Path::from(segment_object_key("t", 0, 0, 1));
        store.put(&key, Bytes::from("abc").into()).await.unwrap();
        let got = store.get_range(&key, 1..3).await.unwrap();
        assert_eq!(&got[..], b"bc");
        assert!(dir
            .path()
            .join("data/objects/topics/t/0/00000000000000000000-1.seg")
            .is_file());
    }

    #[test]
    fn incomplete_settings_are_refused() {
        let local = ObjectStoreConfig::default();
        assert!(matches!(build(&local), Err(StoreError::NoLocalPath)));

        let s3 = ObjectStoreConfig {
            kind: ObjectStoreKind::S3,
            ..Default::default()
        };
        assert!(matches!(build(&s3), Err(StoreError::NoBucket)));

        let half_credentials = ObjectStoreConfig {
            bucket: "b".into(),
            access_key_id: Some("id".into()),
            ..s3.clone()
        };
        assert!(matches!(
            build(&half_credentials),
            Err(StoreError::PartialCredentials)
        ));

        let small_parts = ObjectStoreConfig {
            bucket: "b".into(),
            multipart_part_bytes: 1 << 20,
            ..s3.clone()
        };
        assert!(matches!(
            build(&small_parts),
            Err(StoreError::InvalidUpload(_))
        ));
    }

    #[test]
    fn an_s3_compatible_store_builds_with_explicit_credentials() {
        let config = ObjectStoreConfig {
            kind: ObjectStoreKind::S3,
            bucket: "segments".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            access_key_id: Some("minio".into()),
            secret_access_key: Some("minio-secret".into()),
            allow_http: true,
            ..Default::default()
        };
        build(&config).unwrap();
        assert!(!format!("{config:?}").contains("minio-secret"));
    }
}
