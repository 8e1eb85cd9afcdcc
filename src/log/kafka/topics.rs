//! Kafka clients' shared settings, the topic names of a prefix, and creating the topics.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use super::{kafka_err, MAX_MESSAGE};
use crate::log::{LogError, Topic};
use crate::settings::Settings;

/// The base client settings every Kafka client of a role shares.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "tollgate")
        .set("log_level", "4");
    c
}

/// The topic names of a settings' prefix.
pub fn topic_name(prefix: &str, t: Topic) -> String {
    format!("{prefix}{}", t.name())
}

/// Creates the topics when missing (config compacted; usage with `usage_partitions`).
pub async fn ensure_topics(settings: &Settings, brokers: &str) -> Result<(), LogError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .map_err(kafka_err("creating the admin client"))?;
    let names: Vec<(String, i32, bool)> = Topic::ALL
        .iter()
        .map(|t| {
            let partitions = if *t == Topic::Usage {
                settings.usage_partitions
            } else {
                1
            };
            (
                topic_name(&settings.topic_prefix, *t),
                partitions,
                *t == Topic::Config,
            )
        })
        .collect();
    let max_message = MAX_MESSAGE.to_string();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|(n, p, compact)| {
            let t = NewTopic::new(n, *p, TopicReplication::Fixed(1));
            if *compact {
                t.set("cleanup.policy", "compact")
                    .set("max.message.bytes", &max_message)
            } else {
                t
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin
        .create_topics(&topics, &opts)
        .await
        .map_err(kafka_err("creating the topics"))?
    {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, source)) => return Err(LogError::CreateTopic { topic, source }),
        }
    }
    Ok(())
}
