-- The interview service's tables (seed 003's schema, with its composite indexes and JSONB).
CREATE TABLE IF NOT EXISTS "User" (
    id          text PRIMARY KEY,
    email       text UNIQUE,
    credits     numeric(10, 2) NOT NULL DEFAULT 0 CHECK (credits >= 0),
    "isPremium" boolean NOT NULL DEFAULT false,
    "createdAt" timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS "User_isPremium_credits_idx" ON "User" ("isPremium", credits);

CREATE TABLE IF NOT EXISTS "InterviewSession" (
    id          text PRIMARY KEY,
    "userId"    text NOT NULL REFERENCES "User" (id),
    "jobTitle"  text NOT NULL,
    "requestId" text NOT NULL,
    status      text NOT NULL DEFAULT 'created',
    config      jsonb NOT NULL DEFAULT '{}'::jsonb,
    "createdAt" timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS "InterviewSession_userId_createdAt_idx"
    ON "InterviewSession" ("userId", "createdAt" DESC);

CREATE TABLE IF NOT EXISTS "UsageEvent" (
    id          bigserial PRIMARY KEY,
    "userId"    text NOT NULL REFERENCES "User" (id),
    "eventType" text NOT NULL,
    "requestId" text NOT NULL,
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    "createdAt" timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS "UsageEvent_userId_eventType_idx" ON "UsageEvent" ("userId", "eventType");
CREATE INDEX IF NOT EXISTS "UsageEvent_requestId_idx" ON "UsageEvent" ("requestId");

-- One row per credit deduction, so a test (or an auditor) can count them per request.
CREATE TABLE IF NOT EXISTS "CreditLedger" (
    id          bigserial PRIMARY KEY,
    "userId"    text NOT NULL REFERENCES "User" (id),
    "requestId" text NOT NULL,
    delta       numeric(10, 2) NOT NULL,
    "createdAt" timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS "CreditLedger_requestId_idx" ON "CreditLedger" ("requestId");
