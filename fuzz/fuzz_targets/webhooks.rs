//! Any body to the webhook parsers: an event or a gateway error, never a
//! panic. The first byte picks the gateway, the second the GitHub event name
//! or the CloudEvents mode; the rest is the body. The GitHub body is signed
//! with the test secret, so parsing goes past the signature check.
#![no_main]

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use mizzen_server::gateways;
use sha2::Sha256;

const SECRET: &[u8] = b"fuzz-secret";

const GITHUB_EVENTS: [&str; 8] = [
    "push",
    "pull_request",
    "issue_comment",
    "check_suite",
    "check_run",
    "release",
    "create",
    "ping",
];

fuzz_target!(|data: &[u8]| {
    let [which, variant, body @ ..] = data else {
        return;
    };
    let mut headers = HeaderMap::new();
    match which % 4 {
        0 => {
            let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("any key length");
            mac.update(body);
            let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
            headers.insert("x-hub-signature-256", header(&signature));
            let event = GITHUB_EVENTS[usize::from(*variant) % GITHUB_EVENTS.len()];
            headers.insert("x-github-event", header(event));
            headers.insert(
                "x-github-delivery",
                header("72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            );
            if variant & 0x80 != 0 {
                headers.insert(
                    "x-github-hook-installation-target-type",
                    header("integration"),
                );
                headers.insert("x-github-hook-installation-target-id", header("12345"));
            }
            let _ = gateways::github(&headers, body, SECRET);
        }
        1 => {
            let _ = gateways::dockerhub(body);
        }
        2 => {
            let _ = gateways::acr(body);
        }
        _ => {
            if variant & 1 == 0 {
                headers.insert("content-type", header("application/cloudevents+json"));
            } else {
                headers.insert("content-type", header("application/json"));
                headers.insert("ce-specversion", header("1.0"));
                headers.insert("ce-id", header("fuzz-1"));
                headers.insert("ce-source", header("https://example.com/fuzz"));
                headers.insert("ce-type", header("com.example.fuzz"));
            }
            let _ = gateways::cloudevent(&headers, body);
        }
    }
});

fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("a fixed, valid header value")
}
