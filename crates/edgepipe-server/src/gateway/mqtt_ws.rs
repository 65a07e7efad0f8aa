//! MQTT over WebSocket (`ws://HOST:PORT/mqtt`, `wss://` on the TLS listener), for browsers and
//! sites whose firewalls pass only HTTP(S): an HTTP/1.1 upgrade on path `/mqtt` with the
//! `mqtt` subprotocol switches the connection to WebSocket binary frames, and the same MQTT
//! service as the plain listeners takes it from there (same authentication, same acks).

use std::io;

use ntex::http::{self, HttpService, Request, Response, h1};
use ntex::io::{Filter, Io, IoBoxed, Layer};
use ntex::{PipelineBinding, ws};

/// The only path that upgrades.
pub const PATH: &str = "/mqtt";

/// The HTTP/1 service of a WebSocket listener: a GET upgrade on [`PATH`] becomes an MQTT
/// connection handed to `mqtt`; any other request gets 404 naming the path.
pub(crate) fn http_service<F: Filter>(
    mqtt: PipelineBinding<IoBoxed, (), io::Error>,
) -> impl ntex::Service<(), Io<F>, Res = (), Error = http::error::DispatchError> {
    HttpService::new(async |req: Request| {
        Ok::<_, io::Error>(Response::NotFound().body(format!(
            "MQTT over WebSocket is at {PATH}, not {}\n",
            req.path()
        )))
    })
    .h1_control(async move |msg: h1::Control<F, io::Error>| {
        let ack = match msg {
            h1::Control::Upgrade(up) if up.get_ref().path() == PATH => {
                let (ack, io, req, codec) = up.handle();
                let io = upgrade(io, &req, codec).await?;
                mqtt.call(io.boxed()).await?;
                ack
            }
            h1::Control::Upgrade(up) => {
                let path = up.get_ref().path().to_owned();
                up.fail_with(
                    Response::NotFound()
                        .body(format!("MQTT over WebSocket is at {PATH}, not {path}\n")),
                )
            }
            other => other.ack(),
        };
        Ok::<_, io::Error>(ack)
    })
}

/// Answers the WebSocket handshake (101, choosing the `mqtt` subprotocol when the client
/// offers it, as MQTT 3.1.1 section 6 asks) and switches the connection to WebSocket frames.
async fn upgrade<F: Filter>(
    io: Io<F>,
    req: &Request,
    codec: h1::Codec,
) -> Result<Io<Layer<ws::WsTransport, F>>, io::Error> {
    let mut res = ws::handshake(req.head()).map_err(|e| {
        tracing::debug!(error = ?e, "mqtt over websocket: bad handshake");
        io::Error::other(format!("websocket handshake: {e:?}"))
    })?;
    let offers_mqtt = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("mqtt")));
    if offers_mqtt {
        res.header("sec-websocket-protocol", "mqtt");
    }
    io.send(
        h1::Message::Item((res.build().drop_body(), http::body::BodySize::Empty)),
        &codec,
    )
    .await
    .map_err(|e| io::Error::other(format!("websocket handshake reply: {e:?}")))?;
    Ok(ws::WsTransport::create(io, ws::Codec::new()))
}
