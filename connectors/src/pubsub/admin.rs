//! Topics, subscriptions and bulk publishing, for development services, tests and
//! `mirador generate`; and moving a region's subscription to where another region's
//! stands, for a failover.

use google_cloud_auth::credentials::anonymous;
use google_cloud_pubsub::client::{Publisher, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::Message;

/// Creates `topic` on the emulator at `endpoint` (`http://host:port`).
pub async fn create_topic(endpoint: &str, project: &str, topic: &str) -> anyhow::Result<()> {
    TopicAdmin::builder()
        .with_endpoint(endpoint)
        .with_credentials(anonymous::Builder::new().build())
        .build()
        .await?
        .create_topic()
        .set_name(format!("projects/{project}/topics/{topic}"))
        .send()
        .await?;
    Ok(())
}

/// Creates `subscription` to `topic`: a message not acknowledged `ack_deadline_secs`
/// after its last lease extension is delivered again.
pub async fn create_subscription(
    endpoint: &str,
    project: &str,
    subscription: &str,
    topic: &str,
    ack_deadline_secs: i32,
) -> anyhow::Result<()> {
    SubscriptionAdmin::builder()
        .with_endpoint(endpoint)
        .with_credentials(anonymous::Builder::new().build())
        .build()
        .await?
        .create_subscription()
        .set_name(format!("projects/{project}/subscriptions/{subscription}"))
        .set_topic(format!("projects/{project}/topics/{topic}"))
        .set_ack_deadline_seconds(ack_deadline_secs)
        .send()
        .await?;
    Ok(())
}

/// Publishes raw payloads to `topic` on the emulator at `endpoint`, waiting for every
/// one. Returns how many were published.
pub async fn publish(
    endpoint: &str,
    project: &str,
    topic: &str,
    payloads: impl Iterator<Item = Vec<u8>>,
) -> anyhow::Result<u64> {
    let publisher = Publisher::builder(format!("projects/{project}/topics/{topic}"))
        .with_endpoint(endpoint)
        .with_credentials(anonymous::Builder::new().build())
        .set_message_count_threshold(1000u32)
        .build()
        .await?;
    let mut published = 0;
    let mut payloads = payloads.peekable();
    // In chunks, so that a long input is not all in memory at once.
    while payloads.peek().is_some() {
        let pending: Vec<_> = payloads
            .by_ref()
            .take(10_000)
            .map(|p| publisher.publish(Message::new().set_data(p)))
            .collect();
        for message in pending {
            message.await?;
            published += 1;
        }
    }
    Ok(published)
}

/// How far before the snapshot's time a subscription is sought when the other region's
/// subscription cannot be read: messages published earlier and not yet processed there
/// would be lost, so the margin is generous (a backlog older than this is lost).
pub const SEEK_REWIND: std::time::Duration = std::time::Duration::from_secs(60);

/// Before region `to` runs a pipeline region `from` ran, on a subscription per region
/// (`{region}` in its name): `to`'s subscription is sought to a Pub/Sub snapshot of
/// `from`'s, so that it delivers exactly what `from` had not acknowledged (and what came
/// after). When `from`'s subscription cannot be snapshotted, it is sought to the time
/// `since` less [`SEEK_REWIND`]. `Ok(None)`: one subscription for both regions, nothing to
/// move.
pub async fn move_subscription(
    spec: &super::PubsubSourceSpec,
    from: &str,
    to: &str,
    since: std::time::SystemTime,
) -> anyhow::Result<Option<String>> {
    let (Some(old), Some(new)) = (spec.in_region(from), spec.in_region(to)) else {
        return Ok(None);
    };
    if old.subscription == new.subscription {
        return Ok(None);
    }
    let connection = super::connection(spec.endpoint.as_ref());
    let mut builder = SubscriptionAdmin::builder();
    if let Some(endpoint) = connection.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(credentials) = connection.credentials {
        builder = builder.with_credentials(credentials);
    }
    let admin = builder.build().await?;
    let millis = since
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut name = format!("{}-to-{to}-{millis}", new.subscription);
    name.truncate(255);
    let snapshot = format!("projects/{}/snapshots/{name}", spec.project);
    let taken = admin
        .create_snapshot()
        .set_name(&snapshot)
        .set_subscription(old.subscription_path())
        .send()
        .await;
    match taken {
        Ok(_) => {
            admin
                .seek()
                .set_subscription(new.subscription_path())
                .set_snapshot(&snapshot)
                .send()
                .await?;
            if let Err(error) = admin.delete_snapshot().set_snapshot(&snapshot).send().await {
                tracing::warn!(%snapshot, %error, "pubsub: cannot delete a failover snapshot");
            }
            Ok(Some(format!(
                "subscription {:?} sought to a snapshot of {:?}: it delivers what region {from:?} \
                 had not acknowledged",
                new.subscription, old.subscription
            )))
        }
        Err(error) => {
            let time = since
                .checked_sub(SEEK_REWIND)
                .unwrap_or(std::time::UNIX_EPOCH);
            let timestamp = google_cloud_wkt::Timestamp::try_from(time)
                .map_err(|e| anyhow::anyhow!("a seek time: {e}"))?;
            admin
                .seek()
                .set_subscription(new.subscription_path())
                .set_time(timestamp)
                .send()
                .await?;
            Ok(Some(format!(
                "subscription {:?} sought to {} s before the snapshot's time: {:?} cannot be \
                 snapshotted ({error}); a backlog older than that would be lost",
                new.subscription,
                SEEK_REWIND.as_secs(),
                old.subscription
            )))
        }
    }
}
