//! Scoped tokens kept in the registry's own storage (`auth/tokens/<name>`, see
//! [`registry_core::layout`]), so that every node sharing the storage sees a new or revoked
//! token at once, and `registry token create` works on a stopped or a running registry alike.

use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt as _;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use registry_auth::token::records::{check_token_name, TokenRecord, TokenRecords};
use registry_auth::Error;
use registry_core::layout;

/// Token records in an object store.
#[derive(Clone, Debug)]
pub struct StoredTokens {
    store: Arc<dyn ObjectStore>,
}

impl StoredTokens {
    /// The records in `store` (the registry's storage: [`registry_core::ObjectRegistry::object_store`]).
    pub fn new(store: Arc<dyn ObjectStore>) -> StoredTokens {
        StoredTokens { store }
    }
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::Records(e.to_string())
}

#[async_trait]
impl TokenRecords for StoredTokens {
    async fn get(&self, name: &str) -> Result<Option<TokenRecord>, Error> {
        if check_token_name(name).is_err() {
            return Ok(None); // no such token can exist (and no such key is read)
        }
        let bytes = match self.store.get(&layout::auth_token(name)).await {
            Ok(got) => got.bytes().await.map_err(failed)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(failed(e)),
        };
        let record: TokenRecord = serde_json::from_slice(&bytes)
            .map_err(|e| failed(format!("token {name} is unreadable: {e}")))?;
        Ok(Some(record))
    }

    async fn put(&self, record: &TokenRecord) -> Result<(), Error> {
        check_token_name(&record.name)?;
        let json = serde_json::to_vec_pretty(record).map_err(failed)?;
        self.store
            .put(&layout::auth_token(&record.name), PutPayload::from(json))
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<bool, Error> {
        if check_token_name(name).is_err() {
            return Ok(false);
        }
        let path = layout::auth_token(name);
        match self.store.head(&path).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(failed(e)),
        }
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(failed(e)),
        }
    }

    async fn list(&self) -> Result<Vec<TokenRecord>, Error> {
        let metas: Vec<_> = self
            .store
            .list(Some(&layout::auth_tokens_root()))
            .try_collect()
            .await
            .map_err(failed)?;
        let mut records = Vec::new();
        for meta in metas {
            let Some(name) = meta.location.filename() else {
                continue;
            };
            if let Some(record) = self.get(name).await? {
                records.push(record);
            }
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry_auth::token::records::secret_hash;

    #[tokio::test]
    async fn records_round_trip() {
        let tokens = StoredTokens::new(Arc::new(object_store::memory::InMemory::new()));
        assert!(tokens.get("ci").await.unwrap().is_none());
        let record = TokenRecord {
            name: "ci".into(),
            secret_sha256: secret_hash("s"),
            scopes: vec!["repository:app/*:pull".into()],
            created: 1,
            expires: None,
            owner: None,
            groups: Vec::new(),
            email: None,
        };
        tokens.put(&record).await.unwrap();
        assert_eq!(tokens.get("ci").await.unwrap(), Some(record.clone()));
        assert_eq!(tokens.list().await.unwrap(), vec![record]);
        assert!(tokens.get("../x").await.unwrap().is_none());
        assert!(tokens.remove("ci").await.unwrap());
        assert!(!tokens.remove("ci").await.unwrap());
        assert!(tokens.list().await.unwrap().is_empty());
    }
}
