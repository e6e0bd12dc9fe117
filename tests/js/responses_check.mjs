// The official openai Node SDK's Responses API against the gateway, run by
// tests/e2e/test_responses.py. Environment: GATEWAY_BASE_URL (http://127.0.0.1:PORT/v1) and
// GATEWAY_API_KEY. Prints one JSON line summarising what the SDK saw; pytest asserts on it.
import OpenAI from 'openai';

const baseURL = process.env.GATEWAY_BASE_URL;
const apiKey = process.env.GATEWAY_API_KEY;
if (!baseURL || !apiKey) {
  throw new Error('set GATEWAY_BASE_URL and GATEWAY_API_KEY');
}

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 10_000 });
const model = 'gpt-4o';
const tools = [
  {
    type: 'function',
    name: 'get_weather',
    description: 'Current weather for a city.',
    parameters: {
      type: 'object',
      properties: { location: { type: 'string' } },
      required: ['location'],
    },
    strict: false,
  },
];
const summary = {};

const created = await client.responses.create({ model, instructions: 'Be brief.', input: 'Hello' });
summary.create = {
  object: created.object,
  status: created.status,
  text: created.output_text,
  usage: created.usage,
};

const stream = await client.responses.create({ model, input: 'Hello', stream: true });
const types = [];
let streamed = '';
let completed = null;
for await (const event of stream) {
  types.push(event.type);
  if (event.type === 'response.output_text.delta') streamed += event.delta;
  if (event.type === 'response.completed') completed = event.response;
}
summary.stream = { first: types[0], last: types.at(-1), text: streamed, usage: completed?.usage };

// A function tool round trip: the call, then its output sent back with the history.
const question = [{ role: 'user', content: 'Weather in Paris?' }];
const first = await client.responses.create({ model, input: question, tools });
const call = first.output.find((item) => item.type === 'function_call');
const answer = await client.responses.create({
  model,
  tools,
  input: [
    ...question,
    ...first.output,
    { type: 'function_call_output', call_id: call.call_id, output: 'Sunny, 21 C' },
  ],
});
summary.tools = {
  name: call.name,
  callId: call.call_id,
  arguments: JSON.parse(call.arguments),
  text: answer.output_text,
};

console.log(JSON.stringify(summary));
