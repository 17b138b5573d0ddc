//! HTTP record ingest on Kafka: a node on a real broker (tansu) on loopback takes a batch
//! over HTTP, answers once the brokers have it, and refuses a batch with a bad record
//! whole.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use wellspring_log::{ConsumerConfig, KafkaLog, KafkaSettings, Log, NoListener, TopicPartition};
use wellspring_nodes::services::{ServiceConfig, Services};
use wellspring_test_support::broker::Broker;
use wellspring_test_support::node_process::{NodeProcess, reference_dag_args};

async fn post(url: &str, topic: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{url}/api/topics/{topic}/records"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn image(well: &str) -> Value {
    json!({
        "experiment_id": "EXP-K", "cell_type": "HUVEC", "plate_number": 1,
        "plate_barcode": "BC1", "well": well, "site": 1, "channel": 1,
        "location": format!("file:///data/{well}.tif")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_posted_over_http_reach_kafka_once_acknowledged_and_bad_batches_not_at_all() {
    let broker = Broker::start();
    let services = Services::start(ServiceConfig::quick()).unwrap();
    let mut node = NodeProcess::start(
        env!("CARGO_BIN_EXE_wellspring"),
        &broker.address,
        "ingest-node",
        &reference_dag_args(services.variables(), "6s"),
    );
    let bad = json!({"records": [
        {"key": "EXP-K/1/B03/1/1", "value": image("B03")},
        {"key": "EXP-K/1/B04/1/1", "value": {"experiment_id": "EXP-K"}},
    ]});
    let (status, answer) = post(&node.url, "images_channel", &bad).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["records"][0]["index"], 1, "{answer}");
    let good = json!({"records": [
        {"key": "EXP-K/1/B02/1/1", "value": image("B02"), "headers": {"uploader": "scope-3"}},
        {"key": "EXP-K/1/B05/1/1", "value": image("B05")},
    ]});
    let (status, answer) = post(&node.url, "images_channel", &good).await;
    assert_eq!(status, 200, "{answer}");
    let offsets = answer["offsets"].as_array().unwrap();
    assert_eq!(offsets.len(), 2, "{answer}");

    // Acknowledged means on the brokers: read exactly where the answer said.
    let log = KafkaLog::connect(KafkaSettings::new(broker.address.clone()))
        .await
        .unwrap();
    let mut read = Vec::new();
    for written in offsets {
        let tp = TopicPartition::new(
            "images_channel",
            written["partition"].as_u64().unwrap() as u32,
        );
        let offset = written["offset"].as_u64().unwrap();
        let mut consumer = log
            .consumer(ConsumerConfig::assign("check", vec![(tp, Some(offset))]))
            .unwrap();
        let records = consumer
            .poll(&mut NoListener, 1, Duration::from_secs(10))
            .await
            .unwrap();
        read.extend(records);
    }
    let keys: Vec<String> = read
        .iter()
        .map(|r| String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(keys, vec!["EXP-K/1/B02/1/1", "EXP-K/1/B05/1/1"]);
    assert_eq!(
        read[0].header("uploader").map(|v| v.to_vec()),
        Some(b"scope-3".to_vec())
    );
    let value: Value = serde_json::from_slice(read[0].value.as_ref().unwrap()).unwrap();
    assert_eq!(value["well"], "B02");
    // Nothing of the refused batch: B03 was valid, but its batch was not.
    let partitions = log.partitions("images_channel").await.unwrap();
    let mut total = 0;
    for p in 0..partitions {
        total += log
            .end_offset(&TopicPartition::new("images_channel", p))
            .await
            .unwrap();
    }
    assert_eq!(total, 2);
    assert!(node.terminate().success());
}
