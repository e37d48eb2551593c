//! The trainer's metrics: one set of gauges updated each step, exported on an optional
//! Prometheus `/metrics` endpoint (`--metrics-addr`). Names come from `tessera_api::metrics`.
//!
//! ```text
//! step loop ──record(StepReport)──► gauges ◄──GET /metrics── Prometheus
//!                                              (a std thread on a TcpListener)
//! ```

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::Arc,
    thread,
    time::Duration,
};

use prometheus::{Encoder, Gauge, Registry, TextEncoder};
use tessera_api::metrics as names;

/// What one step reports.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepReport {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_second: f64,
    pub step_seconds: f64,
    pub mfu: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "cannot listen for /metrics on {addr}: {source}; pick a free address with --metrics-addr"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics registry: {0}")]
    Registry(#[from] prometheus::Error),
}

/// The trainer's gauges, registered in their own registry.
#[derive(Clone)]
pub struct TrainerMetrics {
    registry: Registry,
    step: Gauge,
    loss: Gauge,
    val_loss: Gauge,
    lr: Gauge,
    grad_norm: Gauge,
    tokens_per_second: Gauge,
    step_seconds: Gauge,
    mfu: Gauge,
    checkpoint_seconds: Gauge,
    checkpoint_stall_seconds: Gauge,
    trainable_parameters: Gauge,
    parameters: Gauge,
    optimizer_state_bytes: Gauge,
}

impl TrainerMetrics {
    /// Gauges labelled with the run and the rank.
    pub fn new(run: &str, rank: u32) -> Result<TrainerMetrics, MetricsError> {
        let labels = [
            ("run".to_string(), run.to_string()),
            ("rank".to_string(), rank.to_string()),
        ]
        .into_iter()
        .collect();
        let registry = Registry::new_custom(None, Some(labels))?;
        let gauge = |name: &str, help: &str| -> Result<Gauge, MetricsError> {
            let g = Gauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(TrainerMetrics {
            step: gauge(names::TRAINER_STEP, "optimizer steps completed")?,
            loss: gauge(
                names::TRAINER_LOSS,
                "training loss of the last step (nats/token)",
            )?,
            val_loss: gauge(names::TRAINER_VAL_LOSS, "last validation loss (nats/token)")?,
            lr: gauge(
                names::TRAINER_LEARNING_RATE,
                "learning rate of the last step",
            )?,
            grad_norm: gauge(
                names::TRAINER_GRAD_NORM,
                "global gradient norm before clipping",
            )?,
            tokens_per_second: gauge(
                names::TRAINER_TOKENS_PER_SECOND,
                "training tokens per second",
            )?,
            step_seconds: gauge(names::TRAINER_STEP_SECONDS, "wall time of the last step")?,
            mfu: gauge(
                names::TRAINER_MFU,
                "model FLOPs utilisation of the last step",
            )?,
            checkpoint_seconds: gauge(
                names::TRAINER_CHECKPOINT_SECONDS,
                "time to write the last checkpoint",
            )?,
            checkpoint_stall_seconds: gauge(
                names::TRAINER_CHECKPOINT_STALL_SECONDS,
                "time training waited for the last checkpoint",
            )?,
            trainable_parameters: gauge(
                names::TRAINER_TRAINABLE_PARAMETERS,
                "parameters the optimizer trains (LoRA: the adapters)",
            )?,
            parameters: gauge(names::TRAINER_PARAMETERS, "all the model's parameters")?,
            optimizer_state_bytes: gauge(
                names::TRAINER_OPTIMIZER_STATE_BYTES,
                "bytes of optimizer state this rank holds",
            )?,
            registry,
        })
    }

    pub fn record_step(&self, report: &StepReport) {
        self.step.set(report.step as f64);
        self.loss.set(report.loss);
        self.lr.set(report.lr);
        self.grad_norm.set(report.grad_norm);
        self.tokens_per_second.set(report.tokens_per_second);
        self.step_seconds.set(report.step_seconds);
        self.mfu.set(report.mfu);
    }

    /// What the model trains and the optimizer state this rank holds, set once at start.
    pub fn record_memory(&self, trainable: usize, total: usize, optimizer_state_bytes: usize) {
        self.trainable_parameters.set(trainable as f64);
        self.parameters.set(total as f64);
        self.optimizer_state_bytes.set(optimizer_state_bytes as f64);
    }

    pub fn record_val_loss(&self, loss: f64) {
        self.val_loss.set(loss);
    }

    /// Time training waited to hand a checkpoint over (snapshot, or the whole write when
    /// checkpoints are synchronous).
    pub fn record_checkpoint_stall(&self, seconds: f64) {
        self.checkpoint_stall_seconds.set(seconds);
    }

    /// Time from starting a checkpoint to seeing it committed.
    pub fn record_checkpoint_written(&self, seconds: f64) {
        self.checkpoint_seconds.set(seconds);
    }

    /// The Prometheus text exposition of every gauge.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding gauges into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Serves `/metrics` on `addr` from a background thread for the life of the process.
    /// Returns the bound address (useful with port 0).
    pub fn serve(&self, addr: SocketAddr) -> Result<SocketAddr, MetricsError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let metrics = Arc::new(self.clone());
        thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    // One slow client must not wedge the endpoint.
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = answer(&metrics, stream);
                }
            })
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(bound)
    }
}

fn answer(metrics: &TrainerMetrics, mut stream: TcpStream) -> std::io::Result<()> {
    let mut request_line = String::new();
    let mut reader = BufReader::new(stream.try_clone()?);
    reader.read_line(&mut request_line)?;
    // Drain the headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let (status, content_type, body) = if path == "/metrics" {
        ("200 OK", "text/plain; version=0.0.4", metrics.render())
    } else {
        (
            "404 Not Found",
            "text/plain",
            "only /metrics is served here\n".to_string(),
        )
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn metrics_endpoint_serves_the_recorded_values() {
        let metrics = TrainerMetrics::new("tiny", 0).unwrap();
        metrics.record_step(&StepReport {
            step: 42,
            loss: 2.5,
            lr: 1e-3,
            grad_norm: 0.75,
            tokens_per_second: 1234.0,
            step_seconds: 0.1,
            mfu: 0.01,
        });
        metrics.record_val_loss(2.25);
        metrics.record_memory(35840, 135488, 286720);
        let addr = metrics.serve("127.0.0.1:0".parse().unwrap()).unwrap();
        let response = get(addr, "/metrics");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        // Label order is not fixed by the exposition format; look for each part.
        let sample = |name: &str| {
            response
                .lines()
                .find(|l| l.starts_with(&format!("{name}{{")))
                .unwrap_or_else(|| panic!("no {name} sample in {response}"))
                .to_string()
        };
        for (name, value) in [
            ("tessera_trainer_step", " 42"),
            ("tessera_trainer_val_loss", " 2.25"),
            ("tessera_trainer_trainable_parameters", " 35840"),
            ("tessera_trainer_parameters", " 135488"),
            ("tessera_trainer_optimizer_state_bytes", " 286720"),
        ] {
            let line = sample(name);
            assert!(
                line.contains(r#"run="tiny""#) && line.contains(r#"rank="0""#),
                "{line}"
            );
            assert!(line.ends_with(value), "{line}");
        }
        assert!(get(addr, "/other").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn binding_a_taken_address_is_an_error_naming_it() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let error = TrainerMetrics::new("r", 0)
            .unwrap()
            .serve(addr)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&addr.to_string()) && error.contains("--metrics-addr"),
            "{error}"
        );
    }
}
