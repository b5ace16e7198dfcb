#!/usr/bin/env node
// A native-solc look-alike over solc-js (npm `solc`), for tools that expect a
// `solc` executable (py-solc-x / ape-solidity, Slither) on machines that cannot
// download native compilers. It answers `--version` in the native format and
// `--standard-json` (JSON on stdin, JSON on stdout). Imports are resolved from
// the project root and its node_modules; flags solc-js does not know (such as
// --allow-paths) are accepted and ignored.
"use strict";
const fs = require("fs");
const path = require("path");

const projectRoot = path.resolve(__dirname, "..");
const solc = require(path.join(projectRoot, "node_modules", "solc"));

function nativeVersion() {
  // solc-js reports "0.8.37+commit.f401782d.Emscripten.clang"; native builds
  // report "...Linux.g++", which is the shape version parsers expect.
  return solc.version().replace("Emscripten.clang", "Linux.g++");
}

function findImport(importPath) {
  const roots = [process.cwd(), projectRoot, path.join(projectRoot, "node_modules")];
  for (const root of roots) {
    const candidate = path.resolve(root, importPath);
    if (fs.existsSync(candidate)) {
      return { contents: fs.readFileSync(candidate, "utf8") };
    }
  }
  return { error: `File not found: ${importPath}` };
}

const args = process.argv.slice(2);
if (args.includes("--version")) {
  process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${nativeVersion()}\n`);
} else if (args.includes("--standard-json")) {
  const input = fs.readFileSync(0, "utf8");
  // No process.exit() here: on a pipe, stdout is written asynchronously and exiting
  // early would cut the JSON short.
  process.stdout.write(solc.compile(input, { import: findImport }));
} else {
  process.stderr.write("solc-shim: only --version and --standard-json are supported\n");
  process.exitCode = 2;
}
