// Validates prometheus-operator resources with the @kubernetes-models schemas (JSON Schema from
// the CRDs). Usage: node prometheus_operator_check.mjs FILE.yaml...   (rc 1 + message on the first error)
// tests/deploy copies this file next to a node_modules link to the tools dir, so imports resolve.
import { readFileSync } from "node:fs";
import yaml from "js-yaml";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const models = { ServiceMonitor, PrometheusRule };
let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    const Model = doc && models[doc.kind];
    if (!Model) continue;
    try {
      new Model(doc).validate();
    } catch (err) {
      console.error(`${file}: ${doc.kind}/${doc.metadata?.name}: ${err.message}`);
      process.exit(1);
    }
    console.log(`ok ${doc.kind}/${doc.metadata.name}`);
    checked += 1;
  }
}
if (checked === 0) {
  console.error("no ServiceMonitor or PrometheusRule found");
  process.exit(1);
}
