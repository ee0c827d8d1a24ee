// The official CometD JavaScript client, at its default options, as a GMS chat app would use it:
// handshake, subscribe to the seed's "/_genesys", print each message received, then disconnect
// after `expected` of them. Prints what happened as lines "event: <JSON>" for the test to read
// (the library logs to the console too).
//
// Usage: node client.mjs <comet url> <expected messages>
import { adapt } from "cometd-nodejs-client";
import { CometD } from "cometd";

adapt();
const [url, expectedText] = process.argv.slice(2);
const expected = Number(expectedText);
const say = (event) => console.log(`event: ${JSON.stringify(event)}`);
const cometd = new CometD();
cometd.configure({ url }); // nothing else: appendMessageTypeToURL and the rest at their defaults
let received = 0;
let subscribed = false;
// Every handshake reply: one over WebSocket (the first transport by default) fails where the server
// offers only long-polling, and the client falls back by itself.
cometd.addListener("/meta/handshake", (reply) => {
  say({ event: "handshake", successful: reply.successful, transport: cometd.getTransport()?.type });
  if (!reply.successful || subscribed) {
    return;
  }
  subscribed = true;
  cometd.subscribe(
    "/_genesys",
    (message) => {
      say({ event: "message", channel: message.channel, data: message.data });
      received += 1;
      if (received >= expected) {
        cometd.disconnect((bye) => {
          say({ event: "disconnect", successful: bye.successful });
          process.exit(bye.successful ? 0 : 1);
        });
      }
    },
    (reply) => say({ event: "subscribe", successful: reply.successful }),
  );
});
cometd.handshake();
