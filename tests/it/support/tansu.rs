//! tansu, an Apache-2.0 Kafka-compatible broker written in Rust: a second, independent broker for the
//! end-to-end tests, because librdkafka's mock cluster is a test double that hides much of the protocol.
//! `.ci/run` installs it (`.ci/install-tansu`) and names it in `HOOKRELAY_TEST_TANSU`; without it a test on
//! tansu says so on standard error and runs nothing.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hookrelay::config::Config;

/// A tansu broker (in memory) on a free loopback port, with every topic hookrelay's configuration names.
pub struct Tansu {
    child: Child,
    pub config: Config,
}

impl Tansu {
    /// `None`, said loudly, when tansu is not installed.
    pub fn start(partitions: i32) -> Option<Self> {
        Self::start_with(partitions, partitions)
    }

    /// As [`Tansu::start`], the send topic with `send_partitions` and every other topic with `partitions`.
    pub fn start_with(send_partitions: i32, partitions: i32) -> Option<Self> {
        let Ok(bin) = std::env::var("HOOKRELAY_TEST_TANSU") else {
            eprintln!(
                "!! tansu is not installed (.ci/install-tansu, then HOOKRELAY_TEST_TANSU=<path>): \
                 this test ran on no broker; its embedded-broker twins still ran"
            );
            return None;
        };
        let addr = super::free_port();
        let url = format!("tcp://{addr}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < until,
                "tansu listens on {addr} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut config = super::test_config(&addr.to_string());
        // tansu speaks the classic group protocol only; a short session keeps its rebalances short.
        let consumer = &mut config.kafka.consumer_properties;
        consumer.insert("group.protocol".into(), "classic".into());
        consumer.insert("session.timeout.ms".into(), "6000".into());
        consumer.insert("heartbeat.interval.ms".into(), "500".into());
        for topic in config.topics.all() {
            let n = if topic == config.topics.sends {
                send_partitions
            } else {
                partitions
            };
            let out = Command::new(&bin)
                .args(["topic", "create", "--broker", &url, "--partitions"])
                .arg(n.to_string())
                .arg(&topic)
                .output()
                .expect("tansu topic create runs");
            assert!(
                out.status.success(),
                "tansu creates {topic}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(Self { child, config })
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
