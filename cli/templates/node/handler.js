// {{name}}: an OpenFaaS node20 handler. Sluice runs it with its node runner; dependencies in
// package.json are installed (npm install --omit=dev) on deploy.
'use strict'

module.exports = async (event, context) => {
  // event.body (text for text/*, parsed JSON for application/json), event.headers,
  // event.method, event.query, event.path
  const name = (typeof event.body === 'string' ? event.body.trim() : '') || 'world'
  return context
    .status(200)
    .headers({ 'Content-Type': 'text/plain' })
    .succeed(`Hello, ${name}!\n`)
}
