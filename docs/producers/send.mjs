// Enqueue one tradeflow job from Node.js with built-in modules only (no npm package).
//
//   node send.mjs REDIS_URL NAMESPACE QUEUE ACTOR ARGS_JSON
//   node send.mjs redis://127.0.0.1:6379/0 tradeflow system ping '["hello"]'
//
// Prints the message id (the job's id in `tradeflow jobs show`).  See docs/producers.md.
// With the `redis` npm package the same three commands are hSet, rPush and publish in a multi().
import { randomUUID } from "node:crypto";
import net from "node:net";

const [url, namespace, queue, actor, argsJson] = process.argv.slice(2);
if (argsJson === undefined) {
  console.error("usage: node send.mjs REDIS_URL NAMESPACE QUEUE ACTOR ARGS_JSON");
  process.exit(2);
}
const { hostname, port, password, pathname } = new URL(url);
const id = randomUUID();
const message = {
  queue_name: queue,
  actor_name: actor,
  args: JSON.parse(argsJson),
  kwargs: {},
  options: {},
  message_id: id,
  message_timestamp: Date.now(),
};

// RESP: every command is an array of bulk strings.
const encode = (...words) =>
  `*${words.length}\r\n` + words.map((w) => `$${Buffer.byteLength(w)}\r\n${w}\r\n`).join("");
const commands = [];
if (password) commands.push(encode("AUTH", decodeURIComponent(password)));
const db = pathname.slice(1) || "0";
commands.push(encode("SELECT", db));
commands.push(encode("MULTI"));
commands.push(encode("HSET", `${namespace}:${queue}.msgs`, id, JSON.stringify(message)));
commands.push(encode("RPUSH", `${namespace}:${queue}`, id));
commands.push(encode("PUBLISH", `${namespace}:__wake__.${queue}`, "1"));
commands.push(encode("EXEC"));

const socket = net.createConnection({ host: hostname || "127.0.0.1", port: Number(port || 6379) });
let received = "";
socket.on("connect", () => socket.write(commands.join("")));
socket.on("data", (chunk) => {
  received += chunk.toString();
  // The replies end with EXEC's: an array of the three results (*3, then three integers).
  const error = received.split("\r\n").find((line) => line.startsWith("-"));
  if (error) {
    console.error(`redis: ${error.slice(1)}`);
    process.exit(1);
  }
  if (/\*3\r\n(:\d+\r\n){3}$/.test(received)) {
    socket.end();
    console.log(id);
  }
});
socket.on("error", (err) => {
  console.error(`cannot reach Redis at ${url}: ${err.message}`);
  process.exit(1);
});
