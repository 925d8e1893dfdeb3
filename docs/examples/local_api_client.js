// The agent's local API from Node.js: a Unix socket, one JSON object per line each way.
// Usage: node local_api_client.js [/run/edgefleet/agent.sock]
// Asks what runs (info), predicts on an all-zeros input of the production model's shape,
// and prints both as one JSON object.
"use strict";
const net = require("net");

const path = process.argv[2] || "/run/edgefleet/agent.sock";
const sock = net.createConnection(path);
const waiting = []; // answers come back in request order
let buffer = "";

function call(request) {
  return new Promise((resolve) => {
    waiting.push(resolve);
    sock.write(JSON.stringify(request) + "\n");
  });
}

sock.on("data", (chunk) => {
  buffer += chunk;
  let nl;
  while ((nl = buffer.indexOf("\n")) >= 0) {
    const line = buffer.slice(0, nl);
    buffer = buffer.slice(nl + 1);
    waiting.shift()(JSON.parse(line));
  }
});

sock.on("error", (err) => {
  console.error(`cannot reach the agent at ${path}: ${err.message}`);
  process.exit(1);
});

sock.on("connect", async () => {
  const info = await call({ op: "info" });
  const model = info.ok && info.models.production;
  if (!model) {
    console.error("no production model is loaded yet");
    process.exit(1);
  }
  const shape = model.inputs[0].shape.map((d) => (d === null || d < 0 ? 1 : d));
  const zeros = (dims) => (dims.length === 0 ? 0 : Array.from({ length: dims[0] }, () => zeros(dims.slice(1))));
  const prediction = await call({ op: "predict", inputs: zeros(shape) });
  if (!prediction.ok) {
    console.error(`predict failed: ${prediction.error}`);
    process.exit(1);
  }
  console.log(JSON.stringify({ info, prediction }));
  sock.end();
});
