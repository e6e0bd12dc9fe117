// The official openai Node SDK on the routes beside chat, run by tests/e2e/test_routes.py.
// Environment: GATEWAY_BASE_URL (http://127.0.0.1:PORT/v1), GATEWAY_API_KEY.
// Prints one JSON line summarising what the SDK saw; the pytest side asserts on it.
import OpenAI, { toFile } from 'openai';

const baseURL = process.env.GATEWAY_BASE_URL;
const apiKey = process.env.GATEWAY_API_KEY;
if (!baseURL || !apiKey) {
  throw new Error('set GATEWAY_BASE_URL and GATEWAY_API_KEY');
}
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 10_000 });
const summary = {};

const floats = await client.embeddings.create({
  model: 'text-embedding-3-small',
  input: ['first', 'second text'],
  encoding_format: 'float',
});
summary.embeddingsFloat = {
  vectors: floats.data.map((item) => item.embedding),
  promptTokens: floats.usage.prompt_tokens,
};
// The SDK's default: it asks for base64 and decodes it into floats itself.
const decoded = await client.embeddings.create({ model: 'text-embedding-3-small', input: 'x' });
summary.embeddingsDefault = decoded.data.map((item) => item.embedding);
const encoded = await client.embeddings.create({
  model: 'text-embedding-3-small',
  input: 'x',
  encoding_format: 'base64',
});
summary.embeddingsBase64 = encoded.data.map((item) => item.embedding);

const completion = await client.completions.create({
  model: 'gpt-3.5-turbo-instruct',
  prompt: 'Say hi',
});
summary.completion = { object: completion.object, text: completion.choices[0].text };
let streamed = '';
let finishReason = null;
const stream = await client.completions.create({
  model: 'gpt-3.5-turbo-instruct',
  prompt: 'Say hi',
  stream: true,
});
for await (const chunk of stream) {
  for (const choice of chunk.choices) {
    streamed += choice.text;
    finishReason = choice.finish_reason ?? finishReason;
  }
}
summary.completionStream = { text: streamed, finishReason };

const images = await client.images.generate({ model: 'dall-e-3', prompt: 'a cat', n: 2 });
summary.images = images.data.length;

const speech = await client.audio.speech.create({
  model: 'tts-1',
  voice: 'alloy',
  input: 'Hello there.',
});
summary.speech = {
  contentType: speech.headers.get('content-type'),
  bytes: Buffer.from(await speech.arrayBuffer()).toString('base64'),
};

const transcription = await client.audio.transcriptions.create({
  model: 'whisper-1',
  file: await toFile(Buffer.from('RIFF fake audio \x00\xff'), 'hello.wav'),
});
summary.transcription = transcription.text;

console.log(JSON.stringify(summary));
