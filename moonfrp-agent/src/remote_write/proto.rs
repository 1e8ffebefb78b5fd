//! Prometheus remote_write 1.0 on the wire: the `prometheus.WriteRequest` messages (the fields
//! 1.0 defines, as prost structs instead of generated code), built from a snapshot's typed
//! series, protobuf-encoded and snappy-compressed (block format).
use crate::series::{Kind, Series, Value};

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`: labels sorted by name, samples in time order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Unix milliseconds.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

fn label(name: &str, value: &str) -> Label {
    Label {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

/// Every sample of `series` as the time series a scrape of `/metrics` would give Prometheus
/// (`_total`, `_info`, a histogram's `_sum`, `_count` and `_bucket{le}`), at `ts_ms`, with
/// `external` labels added where a series does not have them.
pub fn timeseries(series: &Series, ts_ms: i64, external: &[(String, String)]) -> Vec<TimeSeries> {
    let mut out = Vec::with_capacity(series.len());
    let mut push = |name: &str, labels: &[(&str, &str)], value: f64| {
        let mut l: Vec<Label> = Vec::with_capacity(labels.len() + external.len() + 1);
        l.push(label("__name__", name));
        for (k, v) in labels {
            l.push(label(k, v));
        }
        for (k, v) in external {
            if !labels.iter().any(|(n, _)| n == k) {
                l.push(label(k, v));
            }
        }
        l.sort_by(|a, b| a.name.cmp(&b.name));
        out.push(TimeSeries {
            labels: l,
            samples: vec![Sample {
                value,
                timestamp: ts_ms,
            }],
        });
    };
    for f in &series.families {
        for s in &f.samples {
            let labels: Vec<(&str, &str)> = s.labels.iter().map(|(k, v)| (*k, &**v)).collect();
            match (&s.value, f.kind) {
                (Value::Histogram(h), _) => {
                    push(&format!("{}_sum", f.name), &labels, h.sum);
                    push(&format!("{}_count", f.name), &labels, h.count as f64);
                    let bucket = format!("{}_bucket", f.name);
                    let mut le = dtoa::Buffer::new();
                    for (upper, cumulative) in &h.buckets {
                        let mut with_le = labels.clone();
                        with_le.push(("le", crate::series::le_label(*upper, &mut le)));
                        push(&bucket, &with_le, *cumulative as f64);
                    }
                }
                (v, Kind::Counter | Kind::Gauge | Kind::Info | Kind::Histogram) => {
                    if let Some(x) = v.as_f64() {
                        push(&f.sample_name(), &labels, x);
                    }
                }
            }
        }
    }
    out
}

/// The request body: protobuf, then snappy's block format (not its framed format).
pub fn encode(req: &WriteRequest) -> Vec<u8> {
    let raw = prost::Message::encode_to_vec(req);
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("snappy compresses any input that fits in memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_through_snappy_and_protobuf() {
        let req = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![label("__name__", "up"), label("job", "x")],
                samples: vec![Sample {
                    value: 1.5,
                    timestamp: 1_700_000_000_000,
                }],
            }],
        };
        let body = encode(&req);
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let back: WriteRequest = prost::Message::decode(raw.as_slice()).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn series_become_sorted_labelled_time_series() {
        use crate::synthetic::{Synthetic, specs};
        let mut watch = crate::watch::WatchTable::new(8);
        watch
            .apply(&mut Synthetic::default(), &specs(3, 7000), |_| {
                std::collections::HashMap::new()
            })
            .unwrap();
        let snap = crate::synthetic::snapshot(
            &Synthetic { round: 1 },
            &watch,
            crate::collect::SystemSample::default(),
            std::time::UNIX_EPOCH,
            1,
        );
        let series = crate::metrics::series(
            Some(&snap),
            &crate::metrics::Extras::default(),
            &crate::metrics::Settings::default(),
        );
        let ts = timeseries(&series, 42, &[("instance".into(), "edge-1".into())]);
        assert!(!ts.is_empty());
        for t in &ts {
            assert_eq!(t.labels[0].name, "__name__", "{t:?}");
            assert!(t.labels.windows(2).all(|w| w[0].name < w[1].name), "{t:?}");
            assert!(t.labels.iter().any(|l| l.name == "instance"));
            assert_eq!(t.samples[0].timestamp, 42);
        }
        // A counter under its sample name, a histogram's buckets with le.
        assert!(
            ts.iter()
                .any(|t| t.labels[0].value == "moonfrp_tunnel_receive_bytes_total")
        );
        assert!(ts.iter().any(|t| {
            t.labels[0].value.ends_with("_bucket") && t.labels.iter().any(|l| l.name == "le")
        }));
    }
}
