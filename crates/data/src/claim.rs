//! Which process writes a stage's outputs: the last one to start it.
//!
//! A stage that is about to write takes the claim (a random token at a fixed key, written
//! atomically) and checks that it still holds it before every write; a process that lost it
//! (a second run of the pipeline, or a scheduler's retry while the first attempt still ran)
//! stops before writing anything more. Outputs of two writers never interleave as long as one
//! output's write is shorter than the later writer's work before its first write (reading and
//! transforming its input): always so on a local disk, in practice on S3. It is no lock: it
//! needs no expiry, and a killed process leaves nothing to clean up.

use crate::error::{DataError, Result};
use crate::workspace::Workspace;

/// This process's claim on the outputs behind `key`.
#[derive(Debug, Clone)]
pub struct Claim {
    key: String,
    token: String,
    /// The holder before this process took it (`None`: nobody).
    previous: Option<bytes::Bytes>,
}

impl Claim {
    /// Takes the claim at `key` (from any earlier holder).
    pub async fn take(ws: &Workspace, key: &str) -> Result<Claim> {
        let previous = ws.get_if_present(key).await?;
        let token = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        ws.put_atomic(key, token.clone().into_bytes()).await?;
        Ok(Claim {
            key: key.to_owned(),
            token,
            previous,
        })
    }

    /// This process's token, as written at the claim's key.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Gives the claim back to the holder it was taken from, when this process still holds it
    /// and wrote nothing (its work failed before writing): an earlier process still writing
    /// goes on instead of stopping for a process that gave up. Best effort: a failure leaves
    /// the claim with this process, which stops the earlier one, as taking it did.
    pub async fn give_back(&self, ws: &Workspace) {
        if !self.held(ws).await.unwrap_or(false) {
            return;
        }
        let _ = match &self.previous {
            Some(token) => ws.put_atomic(&self.key, token.clone()).await,
            None => ws.delete(&self.key).await,
        };
    }

    /// The key the claim lives at.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether no other process has taken the claim since this one did.
    pub async fn held(&self, ws: &Workspace) -> Result<bool> {
        Ok(self.holder(ws).await? == Holder::This)
    }

    /// Who holds the claim now.
    pub async fn holder(&self, ws: &Workspace) -> Result<Holder> {
        Ok(match ws.get_if_present(&self.key).await? {
            Some(token) if token.as_ref() == self.token.as_bytes() => Holder::This,
            Some(token) if is_token(&token) => Holder::Another,
            _ => Holder::Nobody,
        })
    }

    /// Fails when this process no longer holds the claim: [`DataError::Concurrent`] (naming
    /// `stage`) when another process has taken it since, [`DataError::ClaimLost`] when its key
    /// is gone. The check before each write.
    pub async fn ensure(&self, ws: &Workspace, stage: &str) -> Result<()> {
        let (stage, key) = (stage.into(), self.key.clone());
        match self.holder(ws).await? {
            Holder::This => Ok(()),
            Holder::Another => Err(DataError::Concurrent { stage, key }),
            Holder::Nobody => Err(DataError::ClaimLost { stage, key }),
        }
    }
}

/// Whether `bytes` is a token as [`Claim::take`] writes them (`<pid>-<16 hex digits>`): what
/// else is at the key was written by no process taking the claim.
fn is_token(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| t.split_once('-'))
        .is_some_and(|(pid, nonce)| {
            !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && nonce.len() == 16
                && nonce.bytes().all(|b| b.is_ascii_hexdigit())
        })
}

/// Who holds a [`Claim`]'s key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// The process that took this claim.
    This,
    /// A process that took it later.
    Another,
    /// Nobody: the key was removed or overwritten with something no claim writes (by hand,
    /// or the store lost it: a bucket emptied or made anew).
    Nobody,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_taker_holds_the_claim() {
        let ws = Workspace::open("memory://claim").unwrap();
        let first = Claim::take(&ws, "data/_owner").await.unwrap();
        assert!(first.held(&ws).await.unwrap());
        let second = Claim::take(&ws, "data/_owner").await.unwrap();
        assert!(!first.held(&ws).await.unwrap(), "a later process took it");
        assert!(second.held(&ws).await.unwrap());
        second.give_back(&ws).await;
        assert!(
            first.held(&ws).await.unwrap(),
            "given back to the holder it was taken from"
        );
        second.give_back(&ws).await;
        assert!(
            first.held(&ws).await.unwrap(),
            "only a holder gives it back"
        );
        first.give_back(&ws).await;
        assert!(
            !ws.exists("data/_owner").await.unwrap(),
            "nobody held it before the first"
        );
        assert_eq!(first.holder(&ws).await.unwrap(), Holder::Nobody);
        // Overwritten with what no claim writes: nobody's either.
        for garbage in [&b""[..], b"garbage\xff", b"12-xyz"] {
            ws.put_atomic("data/_owner", garbage).await.unwrap();
            assert_eq!(
                first.holder(&ws).await.unwrap(),
                Holder::Nobody,
                "{garbage:?}"
            );
        }
        let third = Claim::take(&ws, "data/_owner").await.unwrap();
        assert_eq!(first.holder(&ws).await.unwrap(), Holder::Another);
        third.give_back(&ws).await;
        ws.delete("data/_owner").await.unwrap();
        let e = first.ensure(&ws, "ingest").await.unwrap_err().to_string();
        assert!(
            e.contains("data/_owner") && e.contains("was removed"),
            "{e}"
        );
        assert!(!second.held(&ws).await.unwrap());
    }
}
