// node modelina_count.js DOCUMENT.json -> one JSON line: {version, modelina, total, anonymous, ...}
// Run by tests/upstream/test_asyncapi_titles.py when a cached npm install of @asyncapi/parser and
// @asyncapi/modelina exists (NODE_PATH points at its node_modules). The document is validated as
// written (AsyncAPI 3.1.0) by @asyncapi/parser. @asyncapi/modelina (5.10.1) accepts AsyncAPI input
// up to 3.0.0 only, so the models are generated from the same document marked 3.0.0: 3.1.0 changes
// nothing modelina reads (new ROS 2 bindings, multi-format schema versions, example payload types).
const fs = require('fs');
const { Parser } = require('@asyncapi/parser');
const { TypeScriptGenerator } = require('@asyncapi/modelina');
const { AsyncAPIInputProcessor } = require('@asyncapi/modelina/lib/cjs/processors/AsyncAPIInputProcessor');

(async () => {
  const text = fs.readFileSync(process.argv[2], 'utf8');
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(text);
  const errors = diagnostics
    .filter((d) => d.severity === 0)
    .map((d) => `${d.code}: ${d.message} at ${d.path.join('/')}`);
  if (!document) {
    console.log(JSON.stringify({ errors }));
    return;
  }
  const raw = JSON.parse(text);
  const version = raw.asyncapi;
  if (!AsyncAPIInputProcessor.supportedVersions.includes(version)) raw.asyncapi = '3.0.0';
  const parsed = await parser.parse(JSON.stringify(raw));
  const models = await new TypeScriptGenerator().generate(parsed.document);
  const names = models.map((m) => m.modelName).sort();
  console.log(
    JSON.stringify({
      version,
      generatedAs: raw.asyncapi,
      modelina: require('@asyncapi/modelina/package.json').version,
      total: names.length,
      anonymous: names.filter((n) => /Anonymous/i.test(n)),
      duplicates: names.filter((n, i) => names.indexOf(n) !== i),
      names,
      errors,
    }),
  );
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
