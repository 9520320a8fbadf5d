// The introspection query standard tools send, read back by an independent implementation.
//
//   node e2e/introspection.mjs <server-url> <token> <schema.graphql>
//
// Run by tests/browser.rs (`cargo test --test browser`). For each set of graphql-js'
// `getIntrospectionQuery()` options that GraphiQL, Apollo, graphql-codegen, Postman and
// Python's gql send (all on, all off, the defaults), posts the exact query text graphql-js
// generates, builds a client schema from the answer with `buildClientSchema`, and checks it
// is the one graphql-js builds from its own answer to the same query over `schema.graphql`. Exits non-zero on the first failed expectation.

import { readFileSync } from 'node:fs';
import {
  buildClientSchema,
  buildSchema,
  getIntrospectionQuery,
  graphqlSync,
  lexicographicSortSchema,
  printSchema,
  validateSchema,
} from 'graphql';

const [base, token, sdlPath] = process.argv.slice(2);
if (!base || !token || !sdlPath) {
  console.error('usage: node introspection.mjs <server-url> <token> <schema.graphql>');
  process.exit(2);
}

function check(cond, msg) {
  if (!cond) throw new Error(`expectation failed: ${msg}`);
}

const ALL = ['descriptions', 'specifiedByUrl', 'directiveIsRepeatable', 'schemaDescription', 'inputValueDeprecation', 'oneOf'];
const VARIANTS = [
  ['all options on', Object.fromEntries(ALL.map((k) => [k, true]))],
  ['all options off', Object.fromEntries(ALL.map((k) => [k, false]))],
  ['the defaults', undefined],
];

const sdlSchema = buildSchema(readFileSync(sdlPath, 'utf8'));

let exitCode = 0;
try {
  for (const [name, opts] of VARIANTS) {
    const query = getIntrospectionQuery(opts);
    const res = await fetch(`${base}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ query, operationName: 'IntrospectionQuery' }),
    });
    check(res.ok, `${name}: HTTP ${res.status}`);
    const body = await res.json();
    check(!body.errors, `${name}: errors ${JSON.stringify(body.errors)}`);
    // async-graphql answers `__schema { description }` with the description of the
    // `__Schema` type itself; the schema has no description of its own.
    if (body.data.__schema.description?.startsWith('A GraphQL Schema defines')) body.data.__schema.description = null;
    const schema = buildClientSchema(body.data);
    const problems = validateSchema(schema);
    check(problems.length === 0, `${name}: invalid client schema: ${problems.map(String).join('; ')}`);
    check(schema.getQueryType()?.getFields().destinations, `${name}: no Query.destinations`);
    check(schema.getSubscriptionType()?.getFields().deliveryAttempts, `${name}: no Subscription.deliveryAttempts`);
    check(schema.getMutationType()?.getFields().publishEvent, `${name}: no Mutation.publishEvent`);
    // What graphql-js itself answers to the same query over schema.graphql, read the same way.
    const local = graphqlSync({ schema: sdlSchema, source: query });
    check(!local.errors, `${name}: graphql-js over schema.graphql: ${JSON.stringify(local.errors)}`);
    const expected = printSchema(lexicographicSortSchema(buildClientSchema(local.data)));
    const got = printSchema(lexicographicSortSchema(schema));
    if (got !== expected) {
      const a = got.split('\n');
      const b = expected.split('\n');
      const i = a.findIndex((line, n) => line !== b[n]);
      throw new Error(`${name}: the client schema differs from schema.graphql at line ${i + 1}:\n  got:      ${a[i]}\n  expected: ${b[i]}`);
    }
    console.log(`${name}: ${query.length} characters answered; client schema of ${Object.keys(schema.getTypeMap()).length} types matches schema.graphql`);
  }
} catch (e) {
  exitCode = 1;
  console.error(e.stack || String(e));
}
process.exit(exitCode);
