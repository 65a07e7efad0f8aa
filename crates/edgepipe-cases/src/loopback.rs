//! A webhook receiver on a loopback socket for the notifier's tests and the case benchmark:
//! raw HTTP/1.1 (keep-alive, `Content-Length` bodies), so nothing of ours parses what the
//! notifier sends. The first `fail_first` requests are answered 503, the rest 200.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// One request as received: headers (name, value) and body.
pub type Request = (Vec<(String, String)>, Vec<u8>);

/// Starts the receiver; returns its URL. `on_request` sees every request answered 200.
pub async fn webhook_receiver(
    fail_first: usize,
    on_request: impl Fn(Request) + Send + Sync + 'static,
) -> std::io::Result<String> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", l.local_addr()?);
    let on_request = Arc::new(on_request);
    let seen = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let on_request = on_request.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(sock);
                while let Some(req) = read_request(&mut r).await {
                    let ok = seen.fetch_add(1, Ordering::SeqCst) >= fail_first;
                    if ok {
                        on_request(req);
                    }
                    let status = if ok {
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    };
                    let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    if r.get_mut().write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(url)
}

async fn read_request(r: &mut BufReader<tokio::net::TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await.ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.ok()?;
    Some((headers, body))
}
