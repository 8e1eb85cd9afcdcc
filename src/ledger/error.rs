//! Why the ledger could not append or apply.

use crate::codec::CodecError;
use crate::log::LogError;
use crate::store::StoreError;

/// Why a write (or a read of the log for state) failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Distributed mode: the change is in the config topic (it will apply everywhere) but this
    /// gateway has not read it back in time, so it cannot answer with the new state yet.
    #[error("the change was written to the config topic but not read back within {0:?}")]
    NotReadBack(std::time::Duration),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("the usage record at byte {offset} of usage.log does not decode ({source}); stop the server and run `tollgate log salvage`")]
    Undecodable {
        offset: u64,
        #[source]
        source: CodecError,
    },
}
