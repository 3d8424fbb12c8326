//! Topics, subscriptions and bulk publishing, for development services, tests and
//! `mirador generate`.

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
