// `moe serve` through the official `openai` npm client (scripts/openai_client.sh installs it):
// chat and completions, streamed and not, on the server the caller started.
// node serve_openai.cjs NODE_MODULES BASE_URL API_KEY MODEL
"use strict";
const assert = require("assert");
const path = require("path");
const [nodeModules, baseURL, apiKey, model] = process.argv.slice(2);
const { OpenAI } = require(path.join(nodeModules, "openai"));

async function main() {
  const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 30000 });
  const ask = { model, temperature: 0, seed: 5, max_tokens: 12 };

  const models = await client.models.list();
  assert.deepStrictEqual(models.data.map((m) => m.id), [model]);

  const messages = [{ role: "system", content: "Be brief." }, { role: "user", content: "Say hi!" }];
  const chat = await client.chat.completions.create({ ...ask, messages });
  assert.strictEqual(chat.object, "chat.completion");
  assert.strictEqual(chat.choices.length, 1);
  assert.strictEqual(chat.choices[0].message.role, "assistant");
  assert.strictEqual(typeof chat.choices[0].message.content, "string");
  assert.ok(["stop", "length"].includes(chat.choices[0].finish_reason));
  assert.ok(chat.usage.prompt_tokens > 0 && chat.usage.completion_tokens > 0);
  assert.strictEqual(chat.usage.total_tokens, chat.usage.prompt_tokens + chat.usage.completion_tokens);
  console.log(`ok: chat: ${JSON.stringify(chat.choices[0].message.content)} (${chat.choices[0].finish_reason})`);

  const stream = await client.chat.completions.create({
    ...ask, messages, stream: true, stream_options: { include_usage: true } });
  let text = "", finish = null, usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta.content || "";
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.strictEqual(text, chat.choices[0].message.content, "the stream differs from the answer");
  assert.strictEqual(finish, chat.choices[0].finish_reason);
  assert.deepStrictEqual(usage, chat.usage);
  console.log("ok: chat streamed: the same text, finish_reason and usage");

  const completion = await client.completions.create({ ...ask, prompt: "hi!" });
  assert.strictEqual(completion.object, "text_completion");
  assert.strictEqual(typeof completion.choices[0].text, "string");
  assert.strictEqual(completion.usage.completion_tokens, 12);
  let streamed = "";
  for await (const chunk of await client.completions.create({ ...ask, prompt: "hi!", stream: true }))
    for (const c of chunk.choices) streamed += c.text;
  assert.strictEqual(streamed, completion.choices[0].text);
  console.log(`ok: completions, streamed and not: ${JSON.stringify(streamed)}`);

  // Errors come back as the client's typed errors.
  await assert.rejects(client.completions.create({ ...ask, model: "gpt-4", prompt: "x" }),
                       (e) => e.status === 400 && e.code === "model_not_found");
  const noKey = new OpenAI({ baseURL, apiKey: "wrong", maxRetries: 0 });
  await assert.rejects(noKey.models.list(), (e) => e.status === 401);
  console.log("ok: errors: 400 model_not_found, 401 with a wrong key");
}

main().catch((e) => { console.error(e); process.exit(1); });
