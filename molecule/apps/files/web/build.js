// npm run build: writes build/index.html naming the release (RELEASE_ID) and
// the package version, so a test can tell which build a release serves; and
// counts its builds in .next/cache/builds (the build cache the role carries
// from the current release: a test reads the count).
"use strict";
const fs = require("fs");
const path = require("path");

const release = fs.existsSync("RELEASE_ID") ? fs.readFileSync("RELEASE_ID", "utf8").trim() : "unknown";
const { version } = JSON.parse(fs.readFileSync("package.json", "utf8"));
fs.mkdirSync("build", { recursive: true });
fs.writeFileSync(
  path.join("build", "index.html"),
  `<!doctype html>\n<title>shopweb</title>\n<p id="build">shopweb ${version} release ${release}</p>\n`,
);
const counter = path.join(".next", "cache", "builds");
const builds = (fs.existsSync(counter) ? parseInt(fs.readFileSync(counter, "utf8"), 10) : 0) + 1;
fs.mkdirSync(path.dirname(counter), { recursive: true });
fs.writeFileSync(counter, `${builds}\n`);
console.log(`built build/index.html for release ${release} (build ${builds} of this cache)`);
