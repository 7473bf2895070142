//! The web tests' view of `pleura_runtime::web_client`: the same client, failing the test
//! on any transport error, plus the page scraping the tests share.

// Shared by several test binaries; each uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub use pleura_runtime::web_client::Answer;

/// A loopback address with a port free right now.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[derive(Clone)]
pub struct Client(pleura_runtime::web_client::Client);

impl Client {
    pub fn new(addr: SocketAddr, ca: &Path) -> Self {
        let cfg = pleura_shared::pki::client_config(ca, None).unwrap();
        Self(pleura_runtime::web_client::Client::new(addr, Arc::new(cfg)))
    }

    pub fn with_cookie(&self, name: &str, value: &str) -> Self {
        Self(self.0.with_cookie(name, value))
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.0.get(path).await.unwrap()
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.0.get_with(path, headers).await.unwrap()
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.0.post(path, form).await.unwrap()
    }
}

/// The CSRF token a page carries (the first `csrf` field).
pub fn csrf(page: &Answer) -> String {
    page.field("csrf").expect("a csrf field")
}

/// The examinations a worklist page lists, in order.
pub fn rows(page: &Answer) -> Vec<String> {
    page.text()
        .split("class=\"case-row")
        .skip(1)
        .map(|r| {
            let i = r.find("data-exam=\"").unwrap() + 11;
            r[i..i + 32].to_string()
        })
        .collect()
}
