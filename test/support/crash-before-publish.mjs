// Preloaded (--import) into a test's `authface hub serve`: the process kills itself with SIGKILL
// when it is about to publish a change on a log topic, that is after the change's PostgreSQL
// commit and before anyone hears of it.
import { MqttClient } from 'mqtt';

for (const method of ['publish', 'publishAsync']) {
  const original = MqttClient.prototype[method];
  MqttClient.prototype[method] = function (topic, ...rest) {
    if (typeof topic === 'string' && topic.endsWith('/log')) process.kill(process.pid, 'SIGKILL');
    return original.call(this, topic, ...rest);
  };
}
