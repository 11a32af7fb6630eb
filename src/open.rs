//! Opening a channel: the disk tier (directory, lock, item type,
//! recovery), the core over it, the background sync thread if the policy
//! asks for one, and the two handles. The builder validates the settings
//! before it calls [`open`].

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{Receiver, Sender};
use crate::core::{ReceiverSide, Shared};
use crate::disk::DiskQueue;
use crate::err::OpenError;
use crate::options::Settings;
use crate::sync::Arc;

/// Opens the channel `name` in `dir` with `settings`, already checked.
pub(crate) fn open<T>(dir: &Path, name: &str, settings: Settings) -> Result<(Sender<T>, Receiver<T>), OpenError>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    let mut settings = settings;
    settings.identity.name = std::any::type_name::<T>().to_string();
    let disk = DiskQueue::open(dir, name, &settings)?;
    let side = ReceiverSide::new(&disk);
    let shared = Arc::new(Shared::new(disk, &settings));
    #[cfg(not(loom))]
    if let crate::options::SyncPolicy::Interval(every) = settings.sync {
        crate::core::start_interval_sync(Arc::downgrade(&shared), every)
            .map_err(|err| OpenError::io(dir.join(name), err))?;
    }
    #[cfg(not(loom))]
    if settings.remote.is_some() {
        crate::core::start_tier(Arc::downgrade(&shared)).map_err(|err| OpenError::io(dir.join(name), err))?;
    }
    #[cfg(feature = "metrics")]
    if let Some(labels) = settings.labels {
        crate::metrics::register_channel(Arc::downgrade(&shared), labels);
    }
    Ok((Sender::from_shared(Arc::clone(&shared)), Receiver::from_shared(shared, side)))
}
