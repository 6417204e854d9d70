import { events, logger, Event } from "@brigadecore/brigadier";

interface Greeting {
  name: string;
  punctuation?: string;
}

function greet(greeting: Greeting): string {
  return `Hello, ${greeting.name}${greeting.punctuation ?? "!"}`;
}

events.on("brigade.sh/cli", "exec", async (event: Event): Promise<string> => {
  const name: string = event.payload || "TypeScript";
  console.log(greet({ name }));
  logger.debug(`handled event ${event.id} of project ${event.project.id}`);
  return `Greeted ${name}.`;
});

events.process();
