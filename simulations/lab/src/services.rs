//! What the reference DAG's microservices answer: image metrics, site features, well
//! thumbnails and plate features, each computed from the request alone, so the same input
//! always gives the same output.
//!
//! The demo serves these over real HTTP on loopback (`wellspring_nodes::services`); the
//! simulation harness answers with them in process, in virtual time.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde_json::{Value, json};

/// The four services, by the path they serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    ImageMetrics,
    SiteFeatures,
    WellThumbnails,
    PlateFeatures,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::ImageMetrics,
        Service::SiteFeatures,
        Service::WellThumbnails,
        Service::PlateFeatures,
    ];

    /// The service a request path is for.
    pub fn for_path(path: &str) -> Option<Service> {
        match path {
            "/v1/image-metrics" => Some(Service::ImageMetrics),
            "/v1/well-thumbnails" => Some(Service::WellThumbnails),
            "/v1/plate-features" => Some(Service::PlateFeatures),
            _ if site_path(path).is_some() => Some(Service::SiteFeatures),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Service::ImageMetrics => "image-metrics",
            Service::SiteFeatures => "site-features",
            Service::WellThumbnails => "well-thumbnails",
            Service::PlateFeatures => "plate-features",
        }
    }

    /// The answer to a request of this service, or why it is a bad request.
    pub fn answer(self, path: &str, body: &Value) -> Result<Value, &'static str> {
        match self {
            Service::ImageMetrics => image_metrics(body),
            Service::SiteFeatures => {
                let (experiment, plate, well, site) =
                    site_path(path).ok_or("expected /v1/sites/EXP/PLATE/WELL/SITE/features")?;
                site_features(&experiment, plate, &well, site, body)
            }
            Service::WellThumbnails => Ok(well_thumbnails(body)),
            Service::PlateFeatures => Ok(plate_features(body)),
        }
    }
}

/// `/v1/sites/{experiment}/{plate}/{well}/{site}/features`.
fn site_path(path: &str) -> Option<(String, i64, String, i64)> {
    let rest = path.strip_prefix("/v1/sites/")?.strip_suffix("/features")?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [experiment, plate, well, site] => Some((
            (*experiment).to_owned(),
            plate.parse().ok()?,
            (*well).to_owned(),
            site.parse().ok()?,
        )),
        _ => None,
    }
}

/// A deterministic number in [0, 1) from anything hashable.
pub fn unit<T: Hash>(value: &T, salt: u64) -> f64 {
    let mut hasher = DefaultHasher::new();
    salt.hash(&mut hasher);
    value.hash(&mut hasher);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

fn field<'a>(body: &'a Value, name: &str) -> &'a Value {
    body.get(name).unwrap_or(&Value::Null)
}

pub fn image_metrics(body: &Value) -> Result<Value, &'static str> {
    let location = field(body, "location").as_str().unwrap_or_default();
    if location.is_empty() {
        return Err("location is missing");
    }
    Ok(json!({
        "experiment_id": field(body, "experiment_id"),
        "plate_number": field(body, "plate_number"),
        "well": field(body, "well"),
        "site": field(body, "site"),
        "channel": field(body, "channel"),
        "mean_intensity": 100.0 + 900.0 * unit(&location, 1),
        "std_intensity": 10.0 + 90.0 * unit(&location, 2),
        "saturated_fraction": 0.02 * unit(&location, 3),
    }))
}

pub fn site_features(
    experiment: &str,
    plate: i64,
    well: &str,
    site: i64,
    body: &Value,
) -> Result<Value, &'static str> {
    let channels = field(body, "channels").as_array().map_or(0, Vec::len);
    if channels == 0 {
        return Err("no channel images");
    }
    let key = (experiment.to_owned(), plate, well.to_owned(), site);
    Ok(json!({
        "experiment_id": experiment,
        "plate_number": plate,
        "well": well,
        "site": site,
        "cell_count": 50 + (unit(&key, 4) * 400.0) as i64,
        "features": (0..8).map(|i| unit(&key, 10 + i)).collect::<Vec<f64>>(),
    }))
}

pub fn well_thumbnails(body: &Value) -> Value {
    let experiment = field(body, "experiment_id").as_str().unwrap_or_default();
    let plate = field(body, "plate_number").as_i64().unwrap_or_default();
    let well = field(body, "well").as_str().unwrap_or_default();
    json!({
        "experiment_id": experiment,
        "plate_number": plate,
        "well": well,
        "thumbnail": format!("s3://wellspring-demo/{experiment}/plate-{plate}/{well}/thumbnail.png"),
        "sites": field(body, "sites").as_array().map_or(0, Vec::len),
    })
}

pub fn plate_features(body: &Value) -> Value {
    let key = (
        field(body, "experiment_id").to_string(),
        field(body, "plate_number").to_string(),
    );
    let z_prime = 0.3 + 0.6 * unit(&key, 5);
    json!({
        "experiment_id": field(body, "experiment_id"),
        "plate_number": field(body, "plate_number"),
        "wells": field(body, "wells").as_array().map_or(0, Vec::len),
        "z_prime": z_prime,
        "qc_pass": z_prime >= 0.5,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_service_and_site_keys_come_from_the_path() {
        assert_eq!(
            Service::for_path("/v1/sites/EXP-1/2/B03/4/features"),
            Some(Service::SiteFeatures)
        );
        assert_eq!(Service::for_path("/v1/sites/EXP-1/x/B03/4/features"), None);
        assert_eq!(Service::for_path("/v2/other"), None);
        let answer = Service::SiteFeatures
            .answer(
                "/v1/sites/EXP-1/2/B03/4/features",
                &json!({"channels": [1, 2]}),
            )
            .unwrap_or_default();
        assert_eq!(answer["well"], "B03");
        assert_eq!(answer["site"], 4);
        assert_eq!(
            Service::ImageMetrics.answer("/v1/image-metrics", &json!({})),
            Err("location is missing")
        );
    }
}
