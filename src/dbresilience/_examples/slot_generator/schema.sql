-- The slot generator's tables (seed 004), with the foreign-key indexes it was missing.
CREATE TABLE IF NOT EXISTS "Course" (
    id                 text PRIMARY KEY,
    title              text NOT NULL,
    "durationMinutes"  integer NOT NULL CHECK ("durationMinutes" > 0),
    capacity           integer NOT NULL CHECK (capacity > 0)
);
CREATE TABLE IF NOT EXISTS "CourseSchedule" (
    id          bigserial PRIMARY KEY,
    "courseId"  text NOT NULL REFERENCES "Course" (id),
    weekday     smallint NOT NULL CHECK (weekday BETWEEN 0 AND 6),  -- 0 = Monday
    "startTime" time NOT NULL,
    "endTime"   time NOT NULL CHECK ("endTime" > "startTime")
);
CREATE INDEX IF NOT EXISTS "CourseSchedule_courseId_weekday_idx" ON "CourseSchedule" ("courseId", weekday);
CREATE TABLE IF NOT EXISTS "Booking" (
    id           bigserial PRIMARY KEY,
    "courseId"   text NOT NULL REFERENCES "Course" (id),
    "slotStart"  timestamp NOT NULL,
    "userId"     text NOT NULL
);
CREATE INDEX IF NOT EXISTS "Booking_courseId_slotStart_idx" ON "Booking" ("courseId", "slotStart");
