// Run with: npm test (or node --test) in this directory.
'use strict'

const test = require('node:test')
const assert = require('node:assert')
const handler = require('./handler')

function context () {
  const c = {
    statusCode: 200,
    headerValues: {},
    status (s) { c.statusCode = s; return c },
    headers (h) { c.headerValues = h; return c },
    succeed (v) { c.result = v },
    fail (e) { c.error = e }
  }
  return c
}

test('greets the name in the body', async () => {
  const c = context()
  await handler({ body: 'hi\n', headers: {}, method: 'POST', query: {}, path: '/' }, c)
  assert.strictEqual(c.statusCode, 200)
  assert.strictEqual(c.result, 'Hello, hi!\n')
})

test('greets the world without a body', async () => {
  const c = context()
  await handler({ body: {}, headers: {}, method: 'GET', query: {}, path: '/' }, c)
  assert.strictEqual(c.result, 'Hello, world!\n')
})
