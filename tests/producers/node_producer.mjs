// A strategy task producer in Node.js, with the `redis` npm package: what a non-Python service does.
//
//   node node_producer.mjs REDIS_URL LIST RESULT_PREFIX TASK_JSON [TIMEOUT_SECONDS]
//
// LPUSHes the task, polls GET RESULT_PREFIX+task_id until the status is no longer
// "running", prints the result document and exits 0 (or 2 on timeout).
import { createClient } from "redis";

const [url, list, prefix, taskJson, timeoutSeconds = "90"] = process.argv.slice(2);
const task = JSON.parse(taskJson);
const client = createClient({ url });
await client.connect();
await client.lPush(list, JSON.stringify(task));
const deadline = Date.now() + Number(timeoutSeconds) * 1000;
let document = null;
while (Date.now() < deadline) {
  const raw = await client.get(prefix + task.task_id);
  if (raw !== null && (document = JSON.parse(raw)).status !== "running") break;
  document = null;
  await new Promise((resolve) => setTimeout(resolve, 200));
}
await client.quit();
if (document === null) {
  console.error(`no result for ${task.task_id} within ${timeoutSeconds}s`);
  process.exit(2);
}
console.log(JSON.stringify(document));
