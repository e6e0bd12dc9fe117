// The official openai Node SDK against the gateway, run by tests/test_openai_sdk.py.
// Environment: GATEWAY_BASE_URL (http://127.0.0.1:PORT/v1), GATEWAY_API_KEY, GATEWAY_INVALID_KEY.
// Prints one JSON line summarising what the SDK saw; the pytest side asserts on it.
import OpenAI from 'openai';

const baseURL = process.env.GATEWAY_BASE_URL;
const apiKey = process.env.GATEWAY_API_KEY;
const invalidKey = process.env.GATEWAY_INVALID_KEY;
if (!baseURL || !apiKey || !invalidKey) {
  throw new Error('set GATEWAY_BASE_URL, GATEWAY_API_KEY and GATEWAY_INVALID_KEY');
}

const options = { baseURL, maxRetries: 0, timeout: 10_000 };
const client = new OpenAI({ ...options, apiKey });
const model = 'gpt-4o';
const messages = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'Hello, how are you?' },
];
const tools = [
  {
    type: 'function',
    function: {
      name: 'get_weather',
      description: 'Current weather for a city.',
      parameters: {
        type: 'object',
        properties: { location: { type: 'string' } },
        required: ['location'],
      },
    },
  },
];

function assembleToolCalls(chunks) {
  const calls = [];
  for (const chunk of chunks) {
    for (const delta of chunk.choices[0]?.delta?.tool_calls ?? []) {
      const call = (calls[delta.index] ??= { id: '', name: '', arguments: '' });
      call.id += delta.id ?? '';
      call.name += delta.function?.name ?? '';
      call.arguments += delta.function?.arguments ?? '';
    }
  }
  return calls;
}

async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
  }
  return chunks;
}

const summary = {};

const completion = await client.chat.completions.create({ model, messages });
summary.completion = {
  object: completion.object,
  model: completion.model,
  content: completion.choices[0].message.content,
  finishReason: completion.choices[0].finish_reason,
};

const chunks = await collect(
  await client.chat.completions.create({
    model,
    messages,
    stream: true,
    stream_options: { include_usage: true },
  }),
);
const withChoices = chunks.filter((chunk) => chunk.choices.length > 0);
const last = chunks[chunks.length - 1];
summary.stream = {
  content: withChoices.map((chunk) => chunk.choices[0].delta.content ?? '').join(''),
  finishReason: withChoices[withChoices.length - 1]?.choices[0].finish_reason ?? null,
  lastChoices: last.choices.length,
  usage: last.usage ?? null,
};

const toolCompletion = await client.chat.completions.create({ model, messages, tools });
summary.tools = {
  finishReason: toolCompletion.choices[0].finish_reason,
  calls: (toolCompletion.choices[0].message.tool_calls ?? []).map((call) => ({
    id: call.id,
    name: call.function.name,
    arguments: call.function.arguments,
  })),
};

const toolChunks = await collect(
  await client.chat.completions.create({ model, messages, tools, stream: true }),
);
summary.toolsStream = {
  finishReason: toolChunks[toolChunks.length - 1].choices[0].finish_reason,
  calls: assembleToolCalls(toolChunks),
};

const refused = new OpenAI({ ...options, apiKey: invalidKey });
try {
  await refused.chat.completions.create({ model, messages });
  summary.error = null;
} catch (err) {
  if (!(err instanceof OpenAI.APIError)) {
    throw err;
  }
  summary.error = {
    class: err instanceof OpenAI.PermissionDeniedError ? 'PermissionDeniedError' : err.constructor.name,
    status: err.status,
    type: err.type,
    code: err.code,
    message: err.error?.message,
  };
}

console.log(JSON.stringify(summary));
