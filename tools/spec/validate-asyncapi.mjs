// Validates an AsyncAPI document with @asyncapi/parser (its own schema and
// Spectral ruleset, external $refs to schemas/ resolved from the file's
// folder). Exits 1 on any diagnostic of severity error, printing them all;
// warnings are printed but do not fail.
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Parser, fromFile, DiagnosticSeverity } from '@asyncapi/parser';

const file = process.argv[2];
if (!file) {
  console.error('usage: node validate-asyncapi.mjs <asyncapi.yaml>');
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, resolve(file)).parse();
const names = { [DiagnosticSeverity.Error]: 'error', [DiagnosticSeverity.Warning]: 'warning', [DiagnosticSeverity.Information]: 'info', [DiagnosticSeverity.Hint]: 'hint' };
for (const d of diagnostics) {
  const where = d.path && d.path.length ? d.path.join('.') : '(document)';
  const line = d.range ? `:${d.range.start.line + 1}` : '';
  console.log(`${names[d.severity] ?? d.severity} ${d.code} ${where}${line}: ${d.message}`);
}
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
if (errors.length > 0 || !document) {
  console.error(`asyncapi: ${file}: ${errors.length} error(s)`);
  process.exit(1);
}
console.log(`asyncapi: ${file}: valid AsyncAPI ${document.version()}, ${document.channels().length} channels, ${document.operations().length} operations, ${document.components().messages().length} component messages (${diagnostics.length - errors.length} non-error diagnostics)`);
void readFile; void pathToFileURL;
